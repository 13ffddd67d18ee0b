"""The allowed values of every argument ltpipe takes, in one place: the CLI, a recipe and the
library's constructors (``make_loader``, the mixers, the losses) check a value by the same rule,
so ``CMO(env, alpha=float("inf"))`` fails as ``--mixer-opt alpha=inf`` does, with the same words.

A rule refuses, in one line naming the argument: a bool where a number goes (``true`` is no
number) and a number where a bool goes; nan and inf; a subnormal float (non-zero but below
2.2e-308 in size: no setting means one, and arithmetic on it underflows, as Beta(5e-324, 5e-324)
gives nan); and a value outside the argument's range. Upper bounds stop values that cannot be
meant and would only fail later, deep in a library (``image_size = 1e17``: an allocation DALI
cannot make), or hang (a loop over 10^12 epochs). train/SAFETY.md lists them.
"""

from __future__ import annotations

import math
import numbers
import sys
from dataclasses import dataclass
from typing import Any, Callable, Mapping

SMALLEST_NORMAL = sys.float_info.min  # 2.2e-308: below it (but not 0) a float is subnormal

# Upper bounds (train/SAFETY.md, Values)
MAX_IMAGE_SIDE = 4096  # training image side in px: one fp32 image is then 200 MB
MAX_EPOCHS = 100_000  # mix schedules and label priors loop over the epochs
MAX_SEED = 2**63 - 1  # torch.manual_seed takes a 64-bit integer
MAX_THREADS = 1024  # DALI CPU threads, or reader processes, of one rank
MAX_PREFETCH = 64  # DALI's prefetch queue: each slot holds a decoded batch
MAX_LR = 1000.0  # far above any SGD learning rate that trains (linear scaling at 64K: ~25)
MAX_R = 100.0  # q ∝ n_k^-r: at r = 100 a class twice the smallest already has q below 1e-30
# Beta(α, α) is a fair coin on {0, 1} to within 1e-6 at α = 1e-6 and the constant 1/2 to within
# 1e-3 at α = 1e6: a smaller or larger α cannot mean anything else
MIN_BETA_ALPHA, MAX_BETA_ALPHA = 1e-6, 1e6
MAX_Q_CACHE_GB = 10_000.0  # Q's decoded cache per rank (pipeline/q_cache.py): 10 TB is no budget


def is_number(value) -> bool:
    """A real number, not a bool (a TOML ``true`` is no number)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_integer(value) -> bool:
    """An int (numpy's too), not a bool and not a float (``2.0`` is no count)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def unusable_float(value) -> str | None:
    """What a number must be instead, when it is nan, inf or subnormal; None when usable."""
    if not is_number(value) or isinstance(value, numbers.Integral):
        return None
    x = float(value)
    if not math.isfinite(x):
        return "a finite number"
    if x != 0 and abs(x) < SMALLEST_NORMAL:
        return "0 or at least 2.2e-308 in size (a subnormal number cannot be meant)"
    return None


@dataclass(frozen=True)
class Rule:
    """A value's test and the words that say what passes ("must be in [0, 1]")."""

    test: Callable[[Any], bool]
    says: str

    def problem(self, value) -> str | None:
        """"must be ..., got VALUE" when the rule refuses ``value``, else None."""
        unusable = unusable_float(value)
        if unusable:
            return f"must be {unusable}, got {value!r}"
        return None if self.test(value) else f"{self.says}, got {value!r}"


def _fmt(x) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)  # 1000.0 -> 1000, 1e-06 stays


def _interval(lo, hi, lo_open: bool = False, hi_open: bool = False) -> str:
    if hi is None:
        return f"> {_fmt(lo)}" if lo_open else f">= {_fmt(lo)}"
    if lo is None:
        return f"< {_fmt(hi)}" if hi_open else f"<= {_fmt(hi)}"
    return f"in {'(' if lo_open else '['}{_fmt(lo)}, {_fmt(hi)}{')' if hi_open else ']'}"


def _within(x, lo, hi, lo_open: bool = False, hi_open: bool = False) -> bool:
    if lo is not None and (x <= lo if lo_open else x < lo):
        return False
    return hi is None or (x < hi if hi_open else x <= hi)


def _finite(v) -> bool:
    return is_number(v) and unusable_float(v) is None


def number(lo=None, hi=None, *, lo_open: bool = False, hi_open: bool = False,
           optional: bool = False) -> Rule:
    """A finite real number (an int will do) in the interval; ``optional``: or None."""
    def test(v) -> bool:
        return optional if v is None else _finite(v) and _within(v, lo, hi, lo_open, hi_open)
    return Rule(test, f"must be {_interval(lo, hi, lo_open, hi_open)}")


def integer(lo=None, hi=None, *, optional: bool = False, what: str = "") -> Rule:
    """An integer in [lo, hi]; ``what`` names the unit ("epochs") in the message."""
    def test(v) -> bool:
        return optional if v is None else is_integer(v) and _within(v, lo, hi)
    if lo == 1:
        says = "a positive integer" + (f" <= {_fmt(hi)}" if hi is not None else "")
    else:
        says = f"an integer {_interval(lo, hi)}"
    return Rule(test, f"must be {says}" + (f" ({what})" if what else ""))


def choice(*options, optional: bool = False) -> Rule:
    def test(v) -> bool:
        return (v is None and optional) or (isinstance(v, str) and v in options)
    return Rule(test, f"must be one of {', '.join(map(str, options))}")


def text(optional: bool = False) -> Rule:
    return Rule(lambda v: isinstance(v, str) or (optional and v is None), "must be a string")


def flag() -> Rule:
    """True or false, nothing else (1 and "yes" are no flags)."""
    return Rule(lambda v: isinstance(v, bool), "must be true or false")


def interval_pair(lo: float, hi: float, *, lo_open: bool = False) -> Rule:
    """A pair (a, b) of numbers with lo <= a <= b <= hi (``lo_open``: lo < a)."""
    def test(v) -> bool:
        if not isinstance(v, (tuple, list)) or len(v) != 2 or not all(map(_finite, v)):
            return False
        a, b = v
        return (a > lo if lo_open else a >= lo) and a <= b <= hi
    return Rule(test, f"must satisfy {_fmt(lo)} {'<' if lo_open else '<='} lo <= hi <= "
                      f"{_fmt(hi)}")


def channel_stats(positive: bool) -> Rule:
    """None, or one number per RGB channel (``std``: each > 0)."""
    def test(v) -> bool:
        if v is None:
            return True
        if not isinstance(v, (tuple, list)) or len(v) != 3 or not all(map(_finite, v)):
            return False
        return all(x > 0 for x in v) if positive else True
    return Rule(test, "must be 3 finite numbers, one per channel" +
                (", each > 0" if positive else ""))


# rules that more than one owner uses
PROB = number(0, 1)
OPTIONAL_PROB = number(0, 1, optional=True)  # None: the schedule's default (mixers/base.py)
BETA_ALPHA = number(MIN_BETA_ALPHA, MAX_BETA_ALPHA)
FG_R = number(0, MAX_R)
BOX = choice("batch", "sample")
IMAGE_SIDE = integer(1, MAX_IMAGE_SIDE, what="px")
EPOCHS = integer(1, MAX_EPOCHS)
SEED = integer(0, MAX_SEED)
THREADS = integer(1, MAX_THREADS)
PREFETCH = integer(1, MAX_PREFETCH)
FLAG = flag()
# Q's decoded cache per rank: "auto" (from the free memory) or GB, 0 = off; its images' long side
Q_CACHE_GB = Rule(lambda v: v == "auto" or (_finite(v) and 0 <= v <= MAX_Q_CACHE_GB),
                  f"must be 'auto' or GB in [0, {_fmt(MAX_Q_CACHE_GB)}] (0: off)")
Q_CACHE_SIDE = integer(8, MAX_IMAGE_SIDE, what="px")


def first_problem(rules: Mapping[str, Rule], values: Mapping[str, Any]) -> tuple[str, str] | None:
    """(name, "must be ..., got ...") of the first value of ``values`` its rule refuses, or
    None (names without a rule are not checked here)."""
    for name, rule in rules.items():
        if name in values:
            problem = rule.problem(values[name])
            if problem:
                return name, problem
    return None


def check_values(owner: str, rules: Mapping[str, Rule], values: Mapping[str, Any]) -> None:
    """Raise ``ValueError("<owner>: <name> must be ..., got ...")`` for the first value of
    ``values`` its rule refuses."""
    found = first_problem(rules, values)
    if found:
        raise ValueError(f"{owner}: {found[0]} {found[1]}")
