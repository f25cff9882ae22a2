"""The bottom layer: what every other part of the package may import, and which imports nothing of it.

* :mod:`.records` and :mod:`.journal`: the record kinds and the append-only journal (writer and reader);
* :mod:`.errors`: the delivery error taxonomy (transient, too large, rejected, blocked);
* :mod:`.io`: a run directory's fixed names, JSON read and written atomically;
* :mod:`.messages`: warnings (``DualTrackWarning``) and strict-mode errors;
* :mod:`.values`: metric values and params as the journal stores them; :mod:`.redact`: secrets masked;
* :mod:`.media`: images and figures as PNG files; :mod:`.imports`: optional packages, checked lazily.
"""
