"""Labels and notes on vectors and generations: the labelling queue, facets, API and pages."""
