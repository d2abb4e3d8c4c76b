"""A lock file another user made 0644 (an earlier version's, or under umask 022) in a
group-shared folder still locks for the group: ``flock`` needs no write access."""

from __future__ import annotations

from test_shared_machines import run_as_plain_user

from workbench._io import make_folder
from workbench.evaluation.ratings import Rating, append_rating
from workbench.train.lock import LOCK_FILE, RunLock


def test_a_lock_file_you_cannot_write_still_locks_tells_and_rates(tmp_path):
    # A paused run was shown to a teammate as killed ("interrupted ... the process training
    # it ended"), and the teammate could neither resume it nor rate its evaluation.
    run = make_folder(tmp_path / "run-001")
    with RunLock(run):
        pass
    ratings = tmp_path / "eval-001" / "ratings.jsonl"
    append_rating(ratings, Rating(0, "tuned", "A"))
    for lock in (run / LOCK_FILE, ratings.parent / ".ratings.jsonl.lock"):
        lock.chmod(0o444)  # not writable by the teammate (nor by its owner here)
    check = f"""
        from workbench.evaluation.ratings import Rating, append_rating
        from workbench.train.lock import RunLock, is_held
        print("held:", is_held({str(run)!r}))
        import sys
        if sys.argv[-1:] != ["held-only"]:
            with RunLock({str(run)!r}):
                print("locked")
            append_rating({str(ratings)!r}, Rating(1, "tuned", "B"))
            print("rated")
        """
    with RunLock(run):  # the owner's paused run holds it
        held = run_as_plain_user(check.replace('sys.argv[-1:] != ["held-only"]', "False"))
    free = run_as_plain_user(check)
    assert held.returncode == 0 and "held: True" in held.stdout, held.stderr  # was False
    assert free.returncode == 0, free.stderr  # was a WriteError and a PermissionError
    assert free.stdout.split() == ["held:", "False", "locked", "rated"]
