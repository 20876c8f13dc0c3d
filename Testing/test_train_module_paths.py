"""The training module's path checks (FemurUNetTrainLib.options): the one-line message the module shows before an
export or a training starts, for each field that is empty, missing or of the wrong kind."""
from FemurUNetTrainLib.options import export_path_problem, output_model_file, training_paths_problem


def test_the_output_model_gets_pt_only_without_a_suffix(tmp_path):
    assert output_model_file(str(tmp_path / "femur")) == str(tmp_path / "femur.pt")
    assert output_model_file("m.pt") == "m.pt" and output_model_file("m.onnx") == "m.onnx"
    assert output_model_file("") == ""


def test_export_folder_problems(tmp_path):
    file = tmp_path / "a_file"
    file.write_text("x")
    assert export_path_problem("") == "Choose the dataset folder to export into"
    assert export_path_problem(str(file)) == f"The dataset folder is a file: {file}"
    assert export_path_problem(str(tmp_path / "new")) == "" and export_path_problem(str(tmp_path)) == ""


def test_training_path_problems_in_the_order_of_the_fields(tmp_path):
    data, val = tmp_path / "data", tmp_path / "val"
    data.mkdir()
    (tmp_path / "out_dir.pt").mkdir()
    out = str(tmp_path / "m")
    assert training_paths_problem("", "", out) == "Choose the dataset folder (export pairs into it first)"
    assert training_paths_problem(str(val), "", out) == f"Dataset folder not found: {val}"
    assert training_paths_problem(str(data), str(val), out) == f"Validation folder not found: {val}"
    assert training_paths_problem(str(data), "", "") == "Choose the output model file (.pt)"
    assert training_paths_problem(str(data), "", "m.onnx") == "The output model must be a .pt file: m.onnx"
    folder = str(tmp_path / "out_dir")
    assert training_paths_problem(str(data), "", folder) == f"The output model is a folder: {folder}.pt"
    val.mkdir()
    assert training_paths_problem(str(data), str(val), out) == "" and training_paths_problem(str(data), "", out) == ""
