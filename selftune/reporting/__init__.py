"""What a run's results look like to people: tables (`tables`), plots (`plots`), the report
document (`document`) and the per-constraint-type diagnosis (`by_type`).
"""
