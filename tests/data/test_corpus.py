"""Sources: the embedded corpus is real, deterministic and split cleanly; local files are
read exactly; bad inputs fail with messages that name them."""

import re
import shutil

import pytest

from dllm_jax.data.corpus import embedded_corpus, in_validation, local_text, make_source
from dllm_jax.data.stdlib_text import stdlib_documents


def test_embedded_corpus_is_deterministic_and_substantial():
    first = embedded_corpus("all")
    again = stdlib_documents.__wrapped__()  # a fresh extraction, bypassing the cache
    assert again == (first.names, first.texts)
    assert len(first) > 5000 and first.num_bytes > 1.5e6
    assert list(first.names) == sorted(first.names)
    assert len(set(first.names)) == len(first) and len(set(first.texts)) == len(first)
    assert all(t.strip() for t in first.texts)
    names = set(first.names)
    # Real docstrings from the places we expect, and none from excluded trees.
    assert {
        "json",
        "collections.OrderedDict",
        "builtins.str.split",
        "pydoc_data.topics.for",
    } <= names
    assert not any(
        n.startswith(("test.", "idlelib", "tkinter", "turtle", "this", "antigravity"))
        for n in names
    )


def test_embedded_split_is_disjoint_and_small():
    everything = embedded_corpus("all")
    train, validation = embedded_corpus("train"), embedded_corpus("validation")
    assert set(train.names).isdisjoint(validation.names)
    assert set(train.texts).isdisjoint(validation.texts)
    assert len(train) + len(validation) == len(everything)
    assert set(train.names) | set(validation.names) == set(everything.names)
    assert 0.01 <= len(validation) / len(everything) <= 0.05
    assert all(in_validation(n) for n in validation.names)


@pytest.fixture
def text_tree(tmp_path):
    root = tmp_path / "texts"
    (root / "sub" / "deeper").mkdir(parents=True)
    files = {
        "b.txt": "second file\n",
        "a.md": "# Title\r\n\r\nwindows  endings\r\n",
        "sub/c.rst": "tabs\tand unicode 😀 中文",
        "sub/deeper/d.txt": "  leading and trailing  ",
        "sub/empty.txt": "",
        "ignored.py": "print('not text')",
    }
    for name, text in files.items():
        (root / name).write_text(text, encoding="utf-8", newline="")
    return root, files


def test_local_text_reads_folders_exactly(text_tree):
    root, files = text_tree
    source = local_text(root, "all")
    assert list(source.names) == ["a.md", "b.txt", "sub/c.rst", "sub/deeper/d.txt"]
    assert [source[i] for i in range(len(source))] == [files[n] for n in source.names]
    # Explicit files are read whatever their suffix; paths keep the given order.
    both = local_text([root / "ignored.py", root / "b.txt"], "all")
    assert [both[0], both[1]] == [files["ignored.py"], files["b.txt"]]


def test_local_split_does_not_depend_on_location(text_tree, tmp_path):
    root, _ = text_tree
    names = [f"doc_{i:03d}.txt" for i in range(300)]
    for name in names:
        (root / name).write_text(f"document {name}\n")
    moved = shutil.copytree(root, tmp_path / "elsewhere" / "copy")
    for split in ("train", "validation"):
        here, there = local_text(root, split), local_text(moved, split)
        assert here.names == there.names
    validation = local_text(root, "validation")
    assert set(validation.names) == {n for n in local_text(root, "all").names if in_validation(n)}
    assert 0 < len(validation) < 20


def test_huge_files_are_cut_into_paragraph_blocks(tmp_path):
    paragraphs = [f"paragraph {i} " + "word " * (i % 7 * 10) for i in range(200)]
    text = "\n\n".join(paragraphs) + "\r\n\r\nlast one\n"
    path = tmp_path / "big.txt"
    path.write_text(text, encoding="utf-8", newline="")
    source = local_text(path, "all", max_document_bytes=1000)
    docs = [source[i] for i in range(len(source))]
    assert "".join(docs) == text  # blocks tile the file exactly
    assert len(docs) > 10
    assert all(len(d.encode()) <= 1000 for d in docs)
    assert all(re.search(r"\n[ \t\r]*\n$", d) for d in docs[:-1])  # cut after blank lines
    assert source.names[:2] == ("big.txt#0", "big.txt#1")
    validation = local_text(path, "validation", max_document_bytes=1000)
    assert 0 < len(validation) < len(source)


def test_local_text_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        local_text(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no non-empty text documents"):
        local_text(tmp_path / "empty")
    (tmp_path / "empty" / "blank.txt").write_text("")
    with pytest.raises(ValueError, match="no non-empty text documents"):
        local_text(tmp_path / "empty", "all")
    with pytest.raises(ValueError, match="'test'"):
        local_text(tmp_path, "test")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(ValueError, match="latin1.txt"):
        local_text(tmp_path / "latin1.txt", "all")[0]


def test_a_single_small_file_has_no_validation_split_and_says_why(tmp_path):
    name = next(f"doc{i}.txt" for i in range(1000) if not in_validation(f"doc{i}.txt"))
    (tmp_path / name).write_text("some text\n")
    assert len(local_text(tmp_path / name, "train")) == 1
    with pytest.raises(ValueError, match=r"the 1 document\(s\) found all fell in the training split .* 2%"):
        local_text(tmp_path / name, "validation")


def test_make_source(text_tree):
    root, files = text_tree
    assert make_source("embedded", "validation") is embedded_corpus("validation")
    source = make_source(f"local:{root / 'b.txt'},{root / 'sub'}", "all")
    assert [source[i] for i in range(len(source))] == [
        files["b.txt"],
        files["sub/c.rst"],
        files["sub/deeper/d.txt"],
    ]
    for bad in ("imagenet", "local:", "tfds:", "Embedded", ""):
        with pytest.raises(ValueError, match=f"unknown data source spec '{bad}'"):
            make_source(bad)
    with pytest.raises(ValueError, match="split"):
        make_source("embedded", "dev")
