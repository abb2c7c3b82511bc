"""Long-answer text tasks: a short prompt (at most 24 characters), an exact answer of 128-255 characters.

Why long answers: decoding cost is what the text engine speeds up, and Fast-dLLM (Wu et al. 2025) reports no gain
on 20-30-token outputs and 8x at 256. Every answer is meant to be learnable by a small RoPE-only bidirectional
model (a published LLaDA layout has no absolute position embedding, so a token cannot count its way to position
200): each answer character follows from characters a fixed, short distance before it (a counter's previous
value, the previous group's letter) or from a content lookup into the prompt (the letter after this one), and
each answer ends where something local says so (a counter reaching zero), never at a length to be counted.
Groups are joined by "+" so a character's place in its group is a short offset from the last "+".

- count_down "down:73425=" -> "73425+73424+...+73400" (the last two digits count down to 00)
- count_up   "up:73458=" -> "73458+73459+...+73499" (the last two digits count up to 99)
- hex_down   "hex:a3f2c=" -> "a3f2c+a3f2b+...+a3f00" (the last two hexadecimal digits count down to 00)
- oct_down   "oct:57231=" -> "57231+57230+57227+...+57200" (the last two octal digits count down to 00)
- bin_down   "bin:100101=" -> "100101+100100+...+000000" (a six-bit binary counter down to zero)
- letters    "let:pqbx=" -> "pqbx+pqbw+...+pqaa" (a base-26 two-letter counter down to aa, after a fixed pair)
- stride     "skip:c3:40=" -> "c40+f39+i38+...+?00" (the alphabet from c in strides of 3, with a countdown)
- expand     "exp:" + 16-19 distinct letters + "=" -> each letter 8 times
- repeat     "rep:" + 12-19 distinct letters + "=" -> the pattern ten times, each followed by 9, 8, ..., 0

Each generator is a pure function of its random generator; `text_tasks` owns the split rule and the registry.
"""

from __future__ import annotations

import numpy as np

LETTERS = "abcdefghijklmnopqrstuvwxyz"
EXPAND = 8  # copies of each prompt letter in `expand`
REPEATS = 10  # passes of the pattern in `repeat` (one countdown digit each)


def _count_down(rng: np.random.Generator) -> tuple[str, str]:
    head, start = int(rng.integers(0, 1000)), int(rng.integers(21, 42))  # 22-42 numbers: 131-251 characters
    return f"down:{head:03d}{start:02d}=", "+".join(f"{head:03d}{v:02d}" for v in range(start, -1, -1))


def _count_up(rng: np.random.Generator) -> tuple[str, str]:
    head, start = int(rng.integers(0, 1000)), int(rng.integers(58, 79))  # 22-42 numbers: 131-251 characters
    return f"up:{head:03d}{start:02d}=", "+".join(f"{head:03d}{v:02d}" for v in range(start, 100))


def _hex_down(rng: np.random.Generator) -> tuple[str, str]:
    head, start = int(rng.integers(0, 16**3)), int(rng.integers(21, 42))  # 22-42 numbers: 131-251 characters
    return f"hex:{head:03x}{start:02x}=", "+".join(f"{head:03x}{v:02x}" for v in range(start, -1, -1))


def _oct_down(rng: np.random.Generator) -> tuple[str, str]:
    head, start = int(rng.integers(0, 8**3)), int(rng.integers(21, 42))  # 22-42 numbers: 131-251 characters
    return f"oct:{head:03o}{start:02o}=", "+".join(f"{head:03o}{v:02o}" for v in range(start, -1, -1))


def _bin_down(rng: np.random.Generator) -> tuple[str, str]:
    start = int(rng.integers(18, 36))  # 19-36 numbers of 6 bits: 132-251 characters
    return f"bin:{start:06b}=", "+".join(f"{v:06b}" for v in range(start, -1, -1))


def _letter_pair(v: int) -> str:
    return LETTERS[v // 26] + LETTERS[v % 26]


def _letters(rng: np.random.Generator) -> tuple[str, str]:
    head = _letter_pair(int(rng.integers(0, 26 * 26)))
    start = int(rng.integers(25, 51))  # 26-51 groups of 5: 129-254 characters
    return f"let:{head}{_letter_pair(start)}=", "+".join(head + _letter_pair(v) for v in range(start, -1, -1))


def _stride(rng: np.random.Generator) -> tuple[str, str]:
    first, step, count = int(rng.integers(0, 26)), int(rng.integers(1, 10)), int(rng.integers(32, 64))
    groups = (f"{LETTERS[(first + i * step) % 26]}{count - i:02d}" for i in range(count + 1))
    return f"skip:{LETTERS[first]}{step}:{count:02d}=", "+".join(groups)  # 33-64 groups of 4: 131-255


def _distinct_letters(rng: np.random.Generator, low: int, high: int) -> str:
    """low..high distinct letters, so "the letter after this one" is a lookup with one answer."""
    return "".join(rng.permutation(list(LETTERS))[: int(rng.integers(low, high + 1))])


def _expand(rng: np.random.Generator) -> tuple[str, str]:
    s = _distinct_letters(rng, 16, 19)  # 128-152 characters
    return f"exp:{s}=", "".join(c * EXPAND for c in s)


def _repeat(rng: np.random.Generator) -> tuple[str, str]:
    s = _distinct_letters(rng, 12, 19)  # 130-200 characters
    return f"rep:{s}=", "".join(s + str(d) for d in range(REPEATS - 1, -1, -1))


LONG_TASKS = {
    "count_down": _count_down,
    "count_up": _count_up,
    "hex_down": _hex_down,
    "oct_down": _oct_down,
    "bin_down": _bin_down,
    "letters": _letters,
    "stride": _stride,
    "expand": _expand,
    "repeat": _repeat,
}
LONG_MAX_PROMPT = 24  # "exp:" / "rep:" + 19 letters + "="
LONG_MAX_ANSWER = 255  # stride's longest; gen_length 256 holds it and an end-of-text
LONG_MIN_ANSWER = 128
