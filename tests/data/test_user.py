import json

import pytest

from torchslim.core.errors import ConfigError
from torchslim.data.user import label_ids, read_user_data


def test_text_jsonl_and_folders(tmp_path):
    (tmp_path / "a.txt").write_text("hello world")
    assert read_user_data(tmp_path / "a.txt").texts == ["hello world"]
    lines = [{"text": "good", "label": "pos"}, {"text": "bad", "label": "neg"}]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    d = read_user_data(tmp_path / "d.jsonl")
    assert d.texts == ["good", "bad"] and d.labels == ["pos", "neg"]
    assert label_ids(d, {"neg": 0, "pos": 1}, 2) == [1, 0]
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "2.txt").write_text("two")
    (folder / "1.txt").write_text("one")
    assert read_user_data(folder).texts == ["one", "two"]


@pytest.mark.parametrize("content,match", [
    ('{"text": "a"}\n{"txt": "b"}\n', r"d.jsonl:2: each line needs a \"text\" string"),
    ('{"text": "a"}\nnot json\n', r"d.jsonl:2: not a JSON object"),
    ('{"text": "a", "label": 1}\n{"text": "b"}\n', "1 line\\(s\\) have no \"label\""),
    ('{"text": "a", "label": [1]}\n', r"d.jsonl:1: \"label\" must be"),
    ("", "no examples"),
])
def test_errors_name_the_file_and_line(tmp_path, content, match):
    (tmp_path / "d.jsonl").write_text(content)
    with pytest.raises(ConfigError, match=match):
        read_user_data(tmp_path / "d.jsonl")


def test_unknown_labels_and_missing_data(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"text": "a", "label": "meh"}\n')
    with pytest.raises(ConfigError, match="label 'meh' \\(example 1\\) is not one of the model's labels"):
        label_ids(read_user_data(tmp_path / "d.jsonl"), {"neg": 0, "pos": 1}, 2)
    with pytest.raises(ConfigError, match="data not found"):
        read_user_data(tmp_path / "none.txt")
    (tmp_path / "latin.txt").write_bytes(b"\xe9t\xe9")
    with pytest.raises(ConfigError, match="latin.txt: not UTF-8"):
        read_user_data(tmp_path / "latin.txt")
