"""``benchmark``: a candidate optimizer against tuned baselines over a suite of workloads
(``command``), AlgoPerf's scoring (``scoring``) and the leaderboard (``leaderboard``)."""
