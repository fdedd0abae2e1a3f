"""Stage progress without a terminal: a start line, a line at least every `line_every` seconds even while the
stage reports nothing (a long eval), and a finish line; the Prefect artifact is updated coarsely."""
import io
import time


def test_progress_lines_without_a_terminal_even_when_the_stage_is_silent(monkeypatch):
    import tasks.progress as progress_mod

    updates = []
    monkeypatch.setattr(progress_mod, "update_progress_artifact", lambda aid, pct, description: updates.append(pct))
    monkeypatch.setattr(progress_mod, "create_progress_artifact", lambda pct, key, description: "artifact-id")
    out = io.StringIO()
    p = progress_mod.StageProgress("cognate", terminal=False, every=0.5, line_every=0.3, out=out)
    for i in range(20):
        p(i / 40, f"step {i}")
    time.sleep(1.2)  # a long step that reports nothing
    p(1.0, "done")
    p.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "[cognate] started" and lines[-1].startswith("[cognate] finished in")
    silent = [ln for ln in lines if "step 19" in ln]
    assert len(silent) >= 2 and "ETA" in silent[-1]  # the heartbeat repeats the last state while nothing comes
    assert 1 <= len(updates) <= 5 and updates[-1] == 100.0  # coarse artifact updates, and the final one
