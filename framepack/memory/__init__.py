"""Memory: sensing the machine, sizing the models and a job's phases, planning where everything lives (pure), and
placing components as a plan says."""
