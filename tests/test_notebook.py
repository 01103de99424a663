"""Pictures in a notebook: `%run transfer_learning.py` in a real Jupyter kernel (nbclient and
ipykernel, from tests/requirements.txt) shows each once, when its step makes it, and no TensorFlow
logs; on a desktop, the windows open at the end, the final pictures only."""
import json
import os
import shlex
import sys

import matplotlib
import nbformat
from nbclient import NotebookClient

from conftest import SCRIPT, TF_LOG_LINE, run_main, tl, write_colour_images

# The pictures in the order the lesson makes them, told apart by their number of Axes, which the
# inline backend writes in each picture's text/plain ("<Figure size 1100x560 with 8 Axes>").
PICTURES = {"data.png": 8, "history.png": 2, "confusion_matrix.png": 1, "predictions.png": 16,
            "where_it_looks.png": 9}  # 2 classes x 4; loss and accuracy; 1; 4 x 4; 8 + colour bar


class RecordingClient(NotebookClient):
    """Keeps every message as the kernel sent it, updates of a display included."""
    def process_message(self, msg, cell, cell_index):
        self.messages.append(msg)
        return super().process_message(msg, cell, cell_index)


def kernel_of_this_python(folder):
    """A kernel spec in its own folder, found first through $JUPYTER_PATH: this Python (the
    virtual environment's) runs the kernel, whatever kernels the user has installed."""
    spec = folder / "kernels" / "tl-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "transfer_learning tests", "language": "python"}))
    return "tl-test"


def axes_count(output):
    return int(output["data"]["text/plain"].split(" with ")[1].split()[0])


def test_run_in_a_notebook_shows_each_picture_once_when_its_step_makes_it(module32, tmp_path,
                                                                          monkeypatch):
    photos = write_colour_images(tmp_path / "photos", {"red": (200, 40, 40), "blue": (40, 40, 200)},
                                 32, jpeg=True)  # 8 of each for validation, 8 for testing
    (photos / "red" / "notes.jpg").write_bytes(b"not a photo")  # the script warns about it
    out = tmp_path / "run"
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "jupyter_runtime"))
    kernel = kernel_of_this_python(tmp_path / "jupyter")
    # A notebook's environment, as on Colab: matplotlib's inline backend, nothing set for
    # TensorFlow; no PYTEST_CURRENT_TEST, which stops ipykernel showing what C++ code writes.
    env = {k: v for k, v in os.environ.items() if k not in (
        "MPLBACKEND", "TF_USE_LEGACY_KERAS", "TF_CPP_MIN_LOG_LEVEL", "PYTEST_CURRENT_TEST")}
    env.update(IPYTHONDIR=str(tmp_path / "ipython"),
               MPLCONFIGDIR=matplotlib.get_cachedir())  # its font list, built already
    options = ["--data-dir", photos, "--model-handle", module32, "--image-size", 32, "--epochs", 2,
               "--fine-tune-epochs", 1, "--validation-split", 0.25, "--output-dir", out]
    run = "%run " + " ".join(shlex.quote(str(a)) for a in [SCRIPT, *options])
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(run)])
    client = RecordingClient(notebook, kernel_name=kernel, timeout=240, allow_errors=True,
                             resources={"metadata": {"path": str(tmp_path)}})
    client.messages = []
    client.execute(env=env)
    nbformat.write(notebook, str(tmp_path / "lesson.ipynb"))  # to look at when it fails

    outputs = notebook.cells[0].outputs  # as the notebook shows them, updates applied
    assert not [o for o in outputs if o.output_type == "error"], outputs
    streams = [o for o in outputs if o.output_type == "stream"]
    printed = "".join(o.text for o in streams)
    assert f"Saved the run to {out}/" in printed and "== 8. Fine-tuning ==" in printed
    # Each picture once, in the order the lesson makes them.
    pictures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert [axes_count(o) for o in pictures] == list(PICTURES.values()), [
        o["data"]["text/plain"] for o in pictures]
    # The data before training: data.png comes before the training step's first line.
    kinds = ["picture" if "image/png" in o.get("data", {}) else o.get("text", "") for o in outputs]
    training = next(i for i, k in enumerate(kinds) if "== 4. Training the head ==" in k)
    assert kinds.index("picture") < training
    # Fine-tuning redraws three pictures: each replaces the one shown, through its display id.
    shown = {m["content"]["transient"]["display_id"]: axes_count(m["content"])
             for m in client.messages if m["msg_type"] == "display_data"}
    updated = [axes_count(m["content"]) for m in client.messages
               if m["msg_type"] == "update_display_data"
               and m["content"]["transient"]["display_id"] in shown]
    assert len(shown) == 5 and updated == [2, 1, 16]  # history, confusion matrix, predictions
    # The script's own warnings show; nothing the learner cannot act on: no TensorFlow log line.
    warnings = "".join(o.text for o in streams if o.name == "stderr")
    assert warnings.startswith("warning: skipped 1 file(s)") and "notes.jpg" in warnings
    for line in printed.splitlines():
        assert "INFO:" not in line and "WARNING:tensorflow" not in line, line
        assert not TF_LOG_LINE.match(line), line
    assert sorted(os.listdir(out)) == sorted([*PICTURES, "labels.txt", "metrics.json", "model",
                                              "predictions.csv"])


def test_on_a_desktop_the_windows_open_at_the_end_with_the_final_pictures_only(module32, tmp_path,
                                                                                monkeypatch):
    photos = write_colour_images(tmp_path / "photos", {"red": (200, 40, 40), "blue": (40, 40, 200)},
                                 32)
    windows = []
    monkeypatch.setattr(tl.plt, "get_backend", lambda: "TkAgg")  # as on a desktop
    monkeypatch.setattr(tl.plt, "show", lambda: windows.extend(
        tl.plt.figure(n) for n in tl.plt.get_fignums()))
    status, _ = run_main("--data-dir", photos, "--model-handle", module32, "--image-size", 32,
                         "--epochs", 2, "--fine-tune-epochs", 1, "--validation-split", 0.25,
                         "--output-dir", tmp_path / "run")
    assert status == 0
    assert [len(fig.axes) for fig in windows] == list(PICTURES.values())
    history = windows[1].axes[0]
    assert "images: validation" in [line.get_label() for line in history.get_lines()]  # final
    assert tl.plt.get_fignums() == []  # closed once their windows are
