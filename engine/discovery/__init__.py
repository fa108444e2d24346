"""From steered completions to findings: scores, flags, behaviours, ranking, detectors."""
