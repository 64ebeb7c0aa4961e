"""The commands' own code: submitting, collecting, the worker process, status,
steering jobs, reports from files, the demo, TLS set-up, and the options they share."""
