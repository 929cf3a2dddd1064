"""How ``rectrain run`` prints events where its output lands (pure logic over an events
file; the real CLI on a pipe is tested in test_ray_train)."""

import json

from trainer.launch import _EventFollower, interactive

EVENTS = [
    {"type": "lifecycle", "phase": "started", "message": "2 workers", "pass": 0, "step": 0},
    {"type": "train_window", "pass": 0, "step": 10, "ne_window": 0.9, "examples_per_s": 1000.0},
    {"type": "pass", "pass": 0, "step": 20, "train_ne": 0.8, "val_ne": 0.85, "test_ne": 0.86},
    {"type": "lifecycle", "phase": "finished", "message": "", "pass": 0, "step": 20},
]


def _follow(tmp_path, capsys, **kw) -> list[str]:
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in EVENTS) + '{"type": "pa')  # a half-written line
    f = _EventFollower(path, total_steps=0, **kw)
    f.stop.set()  # read what is there once, then stop
    f.run()
    return capsys.readouterr().out.splitlines()


def test_json_lines_are_the_events_themselves_and_skip_half_written_lines(tmp_path, capsys):
    lines = _follow(tmp_path, capsys, progress=True, json_lines=True)
    assert [json.loads(ln) for ln in lines] == EVENTS


def test_plain_lines_one_per_event_worth_a_line(tmp_path, capsys):
    lines = _follow(tmp_path, capsys, progress=False)
    assert lines == [
        "[started] 2 workers",
        "[pass 1] step      10  window NE 0.9000  1,000 ex/s",
        "[pass 1] train NE 0.8000  val NE 0.8500  test NE 0.8600  calib -  AUC -",
        "[finished]",
    ]


def test_a_pipe_is_not_interactive(capsys):
    # under pytest's capture stdout is not a terminal: no bar would be drawn
    assert interactive() is False
