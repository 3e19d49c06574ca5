from bench.phases import PhaseClock


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_nested_phases_are_exclusive_and_add_up_to_the_whole():
    t = FakeClock()
    clock = PhaseClock(now=t)
    with clock.phase("timing"):
        t.t += 2
        with clock.phase("load"):
            t.t += 3
        t.t += 1
    with clock.phase("load"):
        t.t += 4
    assert clock.seconds == {"timing": 3, "load": 7}  # the load inside timing is not counted twice
    assert clock.line(12.0) == "time: timing 3 s, load 7 s (other 2 s, wall 12 s)"
