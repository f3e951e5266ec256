"""Pieces more than one provider uses: outcome reading, file tailing and log following.

``outcome`` reads what ``meridian.stepexec`` reports (every provider), ``filetail`` follows a
growing output file (process, slurm), ``logfollow`` holds the follow loops behind the providers'
``logs`` (all but the cursor-based cloud log readers).
"""
