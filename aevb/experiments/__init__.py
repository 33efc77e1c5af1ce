"""Experiments over many runs: ``aevb compare`` grids (:mod:`.compare`), their reports
(:mod:`.report`) and the README's demo (:mod:`.demo`)."""
