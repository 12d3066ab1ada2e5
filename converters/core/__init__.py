"""converters.core: The plumbing every stage shares: errors by fault, the one confined write path,
safe names from data, parallel maps, incremental re-runs, provenance and pipeline records.

Rooms (import them by name; this face imports nothing, so start-up and DVC's deps stay
per module):

- ``errors``: One exception hierarchy for bad user input (DESIGN.md, convention 4).
- ``files``: The one write path and the one delete path of every stage (DESIGN.md, conventions 8
  and 13).
- ``incremental``: Incremental, additive re-runs: what each input produced, and whether it is up to
  date.
- ``parallel``: Map a function over jobs on all cores, in order, reporting progress.
- ``paths``: Safe output paths from untrusted parts (DESIGN.md, convention 11).
- ``provenance``: The exported PNGs' names and provenance records: the one owner of that layout.
- ``records``: Pipeline records: the JSON files one stage writes and another reads, read in one
  place.
- ``unchanged``: Unchanged stays untouched: the last step of the one write path.
- ``waiting``: Before the first annotation comes back: the stages after ``convert`` wait, and say
  so.
"""

__all__ = ["errors", "files", "incremental", "parallel", "paths", "provenance", "records", "unchanged",
           "waiting"]
