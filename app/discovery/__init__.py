"""What scoring finds (scores, behaviours, ranks) and detectors, with their API and pages."""
