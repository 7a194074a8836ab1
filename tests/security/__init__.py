"""The hostile-input suite: per class of attack, every case and the refusal it must meet.

Real processes only: one ``kmsd serve`` on the embedded PostgreSQL and moto's server
(conftest.py), real ``kmsagent run`` subprocesses against a hostile stand-in for kmsd. Each
module holds one table (``CASES``); every case asserts its exact status (or outcome), that it
was not accepted, no 5xx, a problem+json body where kmsd answers, and that no token or canary
reached the answer or kmsd's log. ``test_leaks.py`` runs last and searches the whole log, the
audit trail, /metrics and the console pages for every marker. The counts per class are
printed at the end of the run (and written as JSON to ``$KMSD_SECURITY_TALLY`` if set).

A case marked ``hole`` is a known gap (a strict xfail, the reason beside it): it fails
the suite once it starts passing, so the marker goes when the fix lands.

==  =================================  ================================================
#   class                              module
==  =================================  ================================================
1   tokens                             test_tokens.py
2   webhook SSRF                       test_webhook_ssrf.py
3   values and tokens in logs          test_log_canaries.py (and test_leaks.py)
4   reconciler poison                  test_reconciler_poison.py
5   adoption takeover                  test_adoption_takeover.py
6   a rotation that writes a value     test_rotation_values.py
7   sign-in replay                     test_signin_replay.py
8   inputs that once answered 500      test_no_500.py
9   exhaustion                         test_exhaustion.py (a kmsd of its own, small caps;
                                       the fd limit: tests/e2e/test_conn_exhaustion.py)
10  fence gaps                         test_fences.py
11  the agent against a hostile kmsd   test_agent.py
12  secrets at rest                    test_at_rest.py
==  =================================  ================================================

Run it against another tree's kmsd (e.g. the one a review attacked) with
``PYTHONPATH=/path/to/tree pytest tests/security``: the servers and agents it starts import
kmsd and kmsagent from there; the summary names the tree under test.
"""
