"""Experiments over many runs: ``aevb compare`` grids (:mod:`.compare`), their reports
(:mod:`.report`) and ``make demo``'s grid (:mod:`.demo`)."""
