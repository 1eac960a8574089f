"""Refuse teacher/student pairs whose tokenizers differ (their scores would not be comparable)."""
from __future__ import annotations

PROBE_TEXT = "Linearized attention keeps 99.5% of quality?\n  Ünïcödé — テスト <|im_end|> 12345 tabs\tand  spaces."


class TokenizerMismatch(ValueError):
    """Teacher and student tokenize text differently."""


def load_tokenizer_for(name_or_path: str, gguf_file: str | None = None):
    """The tokenizer of a checkpoint (dir, .gguf, alias) without loading its weights."""
    from linearize.loading import load_tokenizer, resolve_checkpoint

    return load_tokenizer(resolve_checkpoint(name_or_path, gguf_file))


def check_same_tokenizer(teacher_tok, student_tok, probe: str = PROBE_TEXT) -> None:
    """Raise :class:`TokenizerMismatch` unless vocabularies and the ids of ``probe`` agree."""
    problems = []
    tv, sv = teacher_tok.get_vocab(), student_tok.get_vocab()
    if tv != sv:
        only_t, only_s = set(tv) - set(sv), set(sv) - set(tv)
        moved = sum(1 for k in set(tv) & set(sv) if tv[k] != sv[k])
        problems.append(
            f"vocabularies differ (sizes {len(tv)} vs {len(sv)}; {len(only_t)} tokens only in the teacher, "
            f"{len(only_s)} only in the student, {moved} with different ids)"
        )
    t_ids, s_ids = teacher_tok(probe)["input_ids"], student_tok(probe)["input_ids"]
    if t_ids != s_ids:
        problems.append(f"probe string {probe!r} encodes to {t_ids} (teacher) vs {s_ids} (student)")
    if problems:
        raise TokenizerMismatch("student tokenizer differs from the teacher's: " + "; ".join(problems))
