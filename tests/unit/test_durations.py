import pytest

from meshrun.config.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90),
        ("30s", 30),
        ("15m", 900),
        ("1h30m", 5400),
        ("250ms", 0.25),
        (" 2m 5s ", 125),
        ("1.5s", 1.5),
        (45, 45),
        (0.5, 0.5),
        ("1d", 86400),
    ],
)
def test_parse_duration(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["soon", "", "5 minutes", "1x", "m5", "0", "-3", "0s", True])
def test_bad_durations_say_how_to_write_one(text: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.412, "0.41s"), (12.34, "12.3s"), (245, "4m05s"), (3725, "1h02m")]
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
