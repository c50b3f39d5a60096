"""POPEN textual preferences: edited-token diff, jsonl loader errors, `tpo popen diff`."""

import json

import pytest

from tpo.popen.textual import (
    TextualPreference,
    edited_token_indices,
    fill_edit_indices,
    load_textual_preferences,
    write_textual_preferences,
)


@pytest.mark.parametrize(
    ("y", "yc", "expected"),
    [
        ([1, 2, 3, 4], [1, 2, 3, 4], ([], [])),  # identical
        ([1, 2, 3, 4], [1, 9, 3, 4], ([1], [1])),  # replace one token
        ([1, 2, 3, 4], [1, 8, 9, 4], ([1, 2], [1, 2])),  # replace two
        ([1, 2, 3], [1, 7, 8, 2, 3], ([], [1, 2])),  # insert
        ([1, 2, 3, 4, 5], [1, 4, 5], ([1, 2], [])),  # delete
        ([5, 1, 2], [1, 2, 6], ([0], [2])),  # delete at start, insert at end
        ([1, 2, 3], [7, 8], ([0, 1, 2], [0, 1])),  # nothing in common
        ([], [3], ([], [0])),
    ],
)
def test_edited_token_indices(y, yc, expected):
    assert edited_token_indices(y, yc) == expected


def test_edited_token_indices_no_autojunk_on_long_repetitive_answers():
    # with autojunk, a token filling > 1% of a 200+ token sequence would be junk and unmatched
    y = [1] * 100 + [2] + [1] * 150
    yc = [1] * 100 + [3] + [1] * 150
    assert edited_token_indices(y, yc) == ([100], [100])


def _write(tmp_path, lines, name="prefs.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


GOOD = {"video": "v.mp4", "instruction": "Where is it?", "y": "a b c", "y_c": "a x c"}


def test_loader_reads_records(tmp_path):
    lines = [
        GOOD,
        "",
        {"image": "i.jpg", "instruction": "q", "y": "p", "y_c": "r", "L_y": [0], "L_yc": [0],
         "id": 7},
    ]  # fmt: skip
    prefs = load_textual_preferences(_write(tmp_path, lines))
    assert len(prefs) == 2
    a, b = prefs
    assert (a.video, a.image, a.l_y, a.l_yc) == ("v.mp4", False, None, None)
    assert a.source.endswith("prefs.jsonl:1")
    assert (b.video, b.image, b.l_y, b.l_yc, b.extra) == ("i.jpg", True, [0], [0], {"id": 7})
    assert b.source.endswith("prefs.jsonl:3")
    assert b.to_record() == lines[2]


@pytest.mark.parametrize(
    ("record", "key"),
    [
        ({k: v for k, v in GOOD.items() if k != "y_c"}, "y_c"),
        ({**GOOD, "instruction": 3}, "instruction"),
        ({**GOOD, "L_y": [1, -2]}, "L_y"),
        ({**GOOD, "L_yc": "1,2"}, "L_yc"),
        ({**GOOD, "L_yc": [1.0]}, "L_yc"),
        ({**GOOD, "L_y": [True]}, "L_y"),
        ({k: v for k, v in GOOD.items() if k != "video"}, "video"),
        ({**GOOD, "image": "x.jpg"}, "video"),
    ],
)
def test_loader_errors_name_file_line_and_key(tmp_path, record, key):
    path = _write(tmp_path, [GOOD, record])
    with pytest.raises(ValueError, match=rf"prefs\.jsonl:2.*'{key}'"):
        load_textual_preferences(path)


def test_loader_bad_json_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match=r"prefs\.jsonl:2: not valid JSON"):
        load_textual_preferences(_write(tmp_path, [GOOD, "{oops"]))
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_textual_preferences(tmp_path / "nope.jsonl")


def test_written_records_with_line_separators_in_text_read_back(tmp_path):
    """ensure_ascii=False writes U+2028 / U+0085 raw: they must not end a line."""
    odd = {**GOOD, "y": "a\u2028b c", "y_c": "a\x85x c"}
    path = write_textual_preferences(
        load_textual_preferences(_write(tmp_path, [GOOD, odd, GOOD])), tmp_path / "out.jsonl"
    )
    prefs = load_textual_preferences(path)
    assert [p.y for p in prefs] == ["a b c", "a\u2028b c", "a b c"]
    assert prefs[1].y_c == "a\x85x c" and prefs[2].source.endswith("out.jsonl:3")


def test_fill_edit_indices_fills_only_missing():
    vocab: dict[str, int] = {}

    def tok(text):
        return [vocab.setdefault(w, len(vocab)) for w in text.split()]

    prefs = [
        TextualPreference("v", "q", "the red circle", "the blue circle", source="f:1"),
        TextualPreference("v", "q", "a b", "a c d", l_y=[0], source="f:2"),
    ]
    out = fill_edit_indices(prefs, tok)
    assert (out[0].l_y, out[0].l_yc) == ([1], [1])
    assert (out[1].l_y, out[1].l_yc) == ([0], [1, 2])  # given L_y kept, L_yc from the diff
    assert prefs[0].l_y is None  # inputs untouched
    bad = [TextualPreference("v", "q", "a b", "a c", l_y=[2], l_yc=[1], source="f:9")]
    with pytest.raises(ValueError, match=r"f:9: key 'L_y': index 2 out of range.*2 tokens"):
        fill_edit_indices(bad, tok)


@pytest.fixture(scope="module")
def word_tokenizer(tmp_path_factory):
    """A local word-level HF tokenizer folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "</s>", "the", "red", "blue", "circle", "square", "is", "at", "left"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    folder = tmp_path_factory.mktemp("tok")
    PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", eos_token="</s>"
    ).save_pretrained(folder)
    return folder


def test_cli_diff_fills_indices_with_task_tokens(tmp_path, word_tokenizer, capsys):
    from tpo.cli import main

    src = _write(
        tmp_path,
        [
            {**GOOD, "y": "the red circle <track_begin><tracking>",
             "y_c": "the blue square <track_begin><tracking>", "id": "a"},
            {**GOOD, "y": "the circle is at left", "y_c": "the red circle is at left",
             "L_yc": [1]},
        ],
    )  # fmt: skip
    out = tmp_path / "out" / "filled.jsonl"
    out.parent.mkdir()
    assert main(["popen", "diff", str(src), str(out), "--tokenizer", str(word_tokenizer)]) == 0
    assert "2 preferences, 2 filled" in capsys.readouterr().out
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    # the task tokens are single tokens, so only "red circle" -> "blue square" differs
    assert (recs[0]["L_y"], recs[0]["L_yc"], recs[0]["id"]) == ([1, 2], [1, 2], "a")
    assert (recs[1]["L_y"], recs[1]["L_yc"]) == ([], [1])
    assert [p.name for p in out.parent.iterdir()] == ["filled.jsonl"]  # no temp file left


def test_cli_diff_errors(tmp_path, word_tokenizer, capsys):
    from tpo.cli import main

    src = _write(tmp_path, [GOOD, {**GOOD, "y": 5}])
    out = tmp_path / "o.jsonl"
    assert main(["popen", "diff", str(src), str(out), "--tokenizer", str(word_tokenizer)]) == 2
    assert "prefs.jsonl:2" in capsys.readouterr().err and not out.exists()
    good = _write(tmp_path, [GOOD], name="good.jsonl")
    assert main(["popen", "diff", str(good), str(out), "--tokenizer", str(tmp_path / "none")]) == 2
    assert "--tokenizer" in capsys.readouterr().err
