"""The output guard: an output path that is, or resolves into, any file of an input is refused.

Pure file-system checks (no TensorFlow): a fake SavedModel directory holds the files a real one
holds; every way of naming one of them (the path itself, a relative or absolute symlink, a hard link,
a symlinked directory) and any new file inside the directory must be refused, while a path outside
every input, or a file that merely has equal contents, passes.
"""
import os
import shutil

import pytest

from tflite_retroq.errors import OutputError
from tflite_retroq.io_utils import check_not_inputs, input_files

FILES = ("saved_model.pb", "fingerprint.pb", "variables/variables.index",
         "variables/variables.data-00000-of-00001", "assets/vocab.txt")


@pytest.fixture
def tree(tmp_path):
    sm = tmp_path / "sm"
    for name in FILES:
        (sm / name).parent.mkdir(parents=True, exist_ok=True)
        (sm / name).write_bytes(name.encode())
    (tmp_path / "model.keras").write_bytes(b"zip")
    return tmp_path


def test_input_files_lists_every_file_of_a_directory(tree):
    got = sorted(os.path.relpath(p, tree / "sm") for p in input_files(str(tree / "sm")))
    assert got == sorted(FILES)
    assert input_files(str(tree / "model.keras")) == [str(tree / "model.keras")]


@pytest.mark.parametrize("name", FILES)
def test_each_file_of_a_saved_model_is_refused(tree, name):
    with pytest.raises(OutputError, match="input model"):
        check_not_inputs(str(tree / "sm" / name), [("input model", str(tree / "sm"))])


def test_links_into_a_saved_model_are_refused(tree):
    sm = str(tree / "sm")
    os.symlink(tree / "sm" / "saved_model.pb", tree / "abs.tflite")            # absolute symlink
    os.symlink(os.path.join("sm", "fingerprint.pb"), tree / "rel.tflite")     # relative symlink
    os.link(tree / "sm" / "variables" / "variables.index", tree / "hard.tflite")  # hard link: same inode
    os.symlink(tree / "sm" / "variables", tree / "vars")                      # a directory link
    for out in ("abs.tflite", "rel.tflite", "hard.tflite", "vars/variables.index"):
        with pytest.raises(OutputError, match="input model .its file"):
            check_not_inputs(str(tree / out), [("input model", sm)])
    for out in ("sm/new.tflite", "vars/new.npz", "sm/assets/x.md"):  # a new file would still change the input
        with pytest.raises(OutputError, match="inside the input model"):
            check_not_inputs(str(tree / out), [("input model", sm)])


def test_keras_file_and_its_links_are_refused(tree):
    os.link(tree / "model.keras", tree / "hard.keras")
    os.symlink("model.keras", tree / "soft.keras")
    for out in ("model.keras", "hard.keras", "soft.keras"):
        with pytest.raises(OutputError, match="is the input model;"):
            check_not_inputs(str(tree / out), [("input model", str(tree / "model.keras"))])


def test_paths_outside_every_input_pass(tree):
    shutil.copy(tree / "sm" / "saved_model.pb", tree / "copy.pb")  # equal contents, another file
    inputs = [("input model", str(tree / "sm")), ("input dataset (--data-file)", None)]
    for out in ("copy.pb", "new.tflite", "smx/saved_model.pb"):  # 'smx' shares the prefix 'sm' only
        check_not_inputs(str(tree / out), inputs)
