# soil: ADC reading to percent, and probe faults.
import soil


def test_calibrated_span_maps_to_percent():
    assert soil.percent(52000, 52000, 21000) == 0.0
    assert soil.percent(21000, 52000, 21000) == 100.0
    assert abs(soil.percent(36500, 52000, 21000) - 50.0) < 1e-3


def test_slightly_outside_is_clamped():
    assert soil.percent(53000, 52000, 21000) == 0.0
    assert soil.percent(20000, 52000, 21000) == 100.0


def test_far_outside_or_rails_is_a_fault():
    assert soil.percent(65535, 52000, 21000) is None
    assert soil.percent(0, 52000, 21000) is None
    assert soil.percent(5000, 52000, 21000) is None


def test_inverted_probe_works_too():
    assert abs(soil.percent(40000, 20000, 60000) - 50.0) < 1e-3
