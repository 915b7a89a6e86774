"""Many runs: sweeps, tuning studies, their shared claims, and the reports over them."""
