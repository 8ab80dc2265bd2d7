"""What the loop reads and writes, and the rules it checks answers by: record schemas, the
verifiable constraints, the built-in prompt set, repairs, preference pairs, early rejection and
the standard benchmarks' files. Nothing here loads a model.
"""
