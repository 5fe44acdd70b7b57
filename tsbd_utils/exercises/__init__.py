"""Checks behind the graded exercises of the notebooks (the tests of their otter-grader questions call them).

One module per exercise; each has ``check(answer..., thorough=False)``, which compares a student's answer
with the suite's own implementation and fails with an :class:`~tsbd_utils.exercises.feedback.ExerciseFailed`
naming the input, the expected and the returned answer, and the mistake when it is a known one. The quick check
is a notebook's public test; ``thorough=True`` adds the cases that separate the usual mistakes (its hidden
test). Checks never change the global random state, so a notebook's results do not depend on its exercises.

========== ======================== =================================================
notebook   module                   the student writes
========== ======================== =================================================
00         :mod:`.der`              ``der_from_pairs(before, after)``
01         :mod:`.triggers`         ``blend(images, pattern, alpha)``
02         :mod:`.nwc`              ``nwc(before, after)`` (two state dicts)
03         :mod:`.activeness`       ``layer_activeness(model, batches, layer, lr)``
04         :mod:`.stage1`           ``stage1_masks(changes, n, m)``
05         :mod:`.stage2`           ``aware_step(model, x, y, optimizer, radius, alpha)``
06         :mod:`.pruning`          ``last_safe_amount(sweep)``
07         :mod:`.table1`           ``most_removed`` and ``removed_count``, read off Table 1
========== ======================== =================================================
"""

from .feedback import ExerciseFailed

__all__ = ["ExerciseFailed"]
