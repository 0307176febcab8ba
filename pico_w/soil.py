# Soil moisture from the capacitive probe's ADC reading: linear between the calibrated dry
# and wet readings, clamped to 0..100 %. A reading far outside that span means a loose or
# shorted probe, and None tells the pump to stop trusting it.

# How far (as a share of the calibrated span) a reading may stray before it is a fault.
_SLACK_NUM = 1
_SLACK_DEN = 4


def percent(raw, dry, wet):
    span = dry - wet
    slack = abs(span) * _SLACK_NUM // _SLACK_DEN
    lo = min(dry, wet) - slack
    hi = max(dry, wet) + slack
    if raw < lo or raw > hi or raw <= 0 or raw >= 65535:
        return None
    pct = (dry - raw) * 100.0 / span
    if pct < 0:
        return 0.0
    if pct > 100:
        return 100.0
    return pct
