"""`specdeck bench`'s own parts: prompt suites, placements files and the report."""
