"""The VW workspace: build, predict, learn, save and load, and nothing else touches ``vowpalwabbit``.

Arguments always go through ``arguments.parse_arguments`` here, whoever calls, and
model bytes are loaded only after the options stored in their header passed the same
allow-list (VW re-applies them on load, so a header is as dangerous as a command line).
Predict and learn go straight to the pybind layer: ``Workspace.predict`` wraps every
line in a Python ``Example`` object, which costs three times what VW itself spends.
VW is not thread-safe: callers hold one lock per workspace.
"""

from __future__ import annotations

import os
import struct
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pylibvw
from vowpalwabbit import Workspace

from ..contract import PersonalizerError
from .arguments import parse_arguments

__all__ = ["ModelHeader", "Workspace", "build", "finish", "learn", "learn_pyvw", "learn_scores", "load", "predict",
           "predict_pyvw", "read_header", "save", "stored_arguments"]

Scores = list[list[tuple[int, float]]]


#: What VW's C++ errors arrive as: pybind11 translates std::exception to RuntimeError, invalid_argument /
#: length / domain / range errors to ValueError, out_of_range to IndexError, overflow_error to OverflowError
#: and bad_alloc to MemoryError. Anything else out of VW is a bug of ours and must surface.
VW_ERRORS: tuple[type[Exception], ...] = (RuntimeError, ValueError, IndexError, OverflowError, MemoryError)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def build(arguments: str | Sequence[str]) -> Workspace:
    """A fresh workspace for policy arguments (parsed here again); InvalidPolicyConfiguration if VW refuses."""
    tokens = parse_arguments(arguments)
    try:
        return Workspace(" ".join(tokens) + " --quiet")
    except VW_ERRORS as exc:
        raise PersonalizerError("InvalidPolicyConfiguration",
                                f"Vowpal Wabbit refused the arguments: {_first_line(exc)}") from None


def load(model: bytes, arguments: str | Sequence[str]) -> Workspace:
    """A workspace from model bytes whose header passed the allow-list, run with ``arguments``.

    Raises InvalidModelImportFormat when the header is not a CCB model of this VW with
    allowed options, or when VW cannot load the bytes.
    """
    read_header(model)
    tokens = parse_arguments(arguments)
    with tempfile.TemporaryDirectory(prefix="personalizer-model-") as folder:
        path = Path(folder) / "model.vw"
        path.write_bytes(model)
        try:
            return Workspace(" ".join(tokens) + f" --quiet -i {path}")
        except VW_ERRORS as exc:
            raise PersonalizerError("InvalidModelImportFormat",
                                    f"not a Vowpal Wabbit model for this policy: {_first_line(exc)}") from None


def save(vw: Workspace) -> bytes:
    """The workspace's model file as bytes."""
    fd, path = tempfile.mkstemp(suffix=".vw", prefix="personalizer-model-")
    os.close(fd)
    try:
        vw.save(path)
        return Path(path).read_bytes()
    finally:
        os.unlink(path)


def finish(vw: Workspace) -> None:
    """Release a workspace (its memory; a finished workspace must not be used again)."""
    vw.finish()


def stored_arguments(vw: Workspace) -> str:
    """The options VW runs with (as VW reports them)."""
    return vw.get_arguments()


def predict(vw: Workspace, lines: Sequence[str]) -> Scores:
    """CCB prediction of a multi-line text example: per slot [(action index, probability)], chosen first."""
    examples = vw._parse("\n".join(lines))
    try:
        pylibvw.vw.predict_multi(vw, examples)
        return examples[0].get_decision_scores()
    finally:
        pylibvw.vw._finish_example_multi_ex(vw, examples)


def learn(vw: Workspace, lines: Sequence[str]) -> None:
    """Learn from a labeled multi-line text example (the lean path, as ``predict``)."""
    examples = vw._parse("\n".join(lines))
    try:
        pylibvw.vw.learn_multi(vw, examples)
    finally:
        pylibvw.vw._finish_example_multi_ex(vw, examples)


def learn_scores(vw: Workspace, text: str) -> Scores:
    """Learn a labeled example given as one text; returns the per-slot scores VW computed before updating.

    CCB predicts each slot before it learns it, so these are progressive-validation scores.
    """
    examples = vw._parse(text)
    try:
        pylibvw.vw.learn_multi(vw, examples)
        return examples[0].get_decision_scores()
    finally:
        pylibvw.vw._finish_example_multi_ex(vw, examples)


def predict_pyvw(vw: Workspace, lines: Sequence[str]) -> Scores:
    """``predict`` through pyvw's usual API (Python ``Example`` objects): the benchmarks' baseline."""
    return vw.predict(list(lines))


def learn_pyvw(vw: Workspace, lines: Sequence[str]) -> None:
    """``learn`` through pyvw's usual API: the benchmarks' baseline."""
    vw.learn(list(lines))


# ---------------------------------------------------------------- model header

@dataclass(frozen=True)
class ModelHeader:
    """What a VW model file's header says: VW version, bits and the options VW re-applies on load."""

    version: str
    bits: int
    options: list[str]            # canonical tokens, --bit_precision first (VW adds it on load)
    size: int                     # bytes of the header (the weights follow)


_MAX_HEADER_TEXT = 64 * 1024


def read_header(model: bytes) -> ModelHeader:
    """Parse a VW 9 model header (without VW) and check its options against the allow-list.

    Layout (VW 9, binary): u32 length + version text; u32 length + id text; 'm';
    min and max label (f32); bits (u32); lda (u32); ngram count (u32) + 3 bytes each;
    skip count (u32) + 3 bytes each; u32 length + options text; u32 checksum. Raises
    InvalidModelImportFormat for anything else, or options that fail the allow-list or
    are not a multi-slot (CCB) model.
    """
    def refuse(why: str) -> PersonalizerError:
        return PersonalizerError("InvalidModelImportFormat", f"not a multi-slot Vowpal Wabbit model: {why}", 400)

    pos = 0

    def take(n: int) -> bytes:
        nonlocal pos
        if n < 0 or pos + n > len(model):
            raise refuse("the file ends inside its header")
        chunk = model[pos:pos + n]
        pos += n
        return chunk

    def u32() -> int:
        return int(struct.unpack("<I", take(4))[0])

    def text() -> str:
        size = u32()
        if size > _MAX_HEADER_TEXT:
            raise refuse("a header field is too long")
        raw = take(size)
        if size == 0 or raw[-1:] != b"\0" or b"\0" in raw[:-1]:
            raise refuse("a header text field is malformed")
        try:
            return raw[:-1].decode("ascii")
        except UnicodeDecodeError:
            raise refuse("a header text field is not ASCII") from None

    version = text()
    if not version.startswith("9."):
        raise refuse(f"VW version '{version[:20]}' (this server reads VW 9 models)")
    if text():
        raise refuse("the model carries an id (--id is not a learning option)")
    if take(1) != b"m":
        raise refuse("no model marker")
    take(8)  # min and max label
    bits = u32()
    if u32() != 0:
        raise refuse("an LDA model")
    if u32() != 0 or u32() != 0:  # ngram count; skip count (read only if the ngram count was 0)
        raise refuse("n-grams or skips (not learning options here)")
    options = text()
    take(4)  # checksum (VW verifies it on load)
    try:
        tokens = parse_arguments(["--ccb_explore_adf", "--bit_precision", str(bits), *options.split()],
                                 mode="header")
    except PersonalizerError as exc:
        raise PersonalizerError("InvalidModelImportFormat", f"the model's stored options are refused: {exc.message}",
                                400) from None
    if "--ccb_explore_adf" not in options.split():
        raise refuse("its stored options lack --ccb_explore_adf (not a conditional contextual bandit model)")
    return ModelHeader(version=version, bits=bits, options=tokens[1:], size=pos)
