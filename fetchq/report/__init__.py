"""Results turned into figures and pages: sketches, time buckets, places, the text
and HTML reports, result files and writers.  Pure: nothing here touches the network."""
