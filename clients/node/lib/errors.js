// The worker's errors and its exit codes, after fetchq/errors.py: a user's
// mistake ends the worker with one line and the exit code the Python programs use.

/** Exit codes shared with every fetchq command (fetchq/errors.py, ExitCode). */
export const ExitCode = Object.freeze({
  OK: 0,
  FAILURE: 1,
  USAGE: 2,
  SKIPPED_INPUT: 3,
  UNREACHABLE: 4,
  AUTH_FAILED: 5,
  NO_AUTHKEY: 6,
  ADDRESS_IN_USE: 7,
  VERSION_MISMATCH: 8,
  TLS_FAILED: 9,
  INTERRUPTED: 130,
});

/** Something the user must fix: never retried (wrong key, version, TLS, a bad option). */
export class FatalError extends Error {
  constructor(message, exitCode = ExitCode.FAILURE) {
    super(message);
    this.exitCode = exitCode;
  }
}

/** The connection, not the call, failed: close it, wait, and try again. */
export class WireError extends Error {}

/** An error reply: `["#ERROR", {"name", "message"}]`. */
export class RemoteError extends Error {
  constructor(name, message) {
    super(`${name}: ${message}`);
    this.remoteName = name;
    this.remoteMessage = message;
  }
}
