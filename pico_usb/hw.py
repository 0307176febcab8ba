# The only module that touches hardware (machine, dht): a plain Pico with a DHT11/DHT22 on a
# GPIO and a soil-moisture probe on an ADC pin. Everything else gets a Sensors object.
from micropython import const
import binascii
import machine
import dht

_SAMPLES = const(8)  # ADC reads averaged per reading; the probe is noisy


def unique_id():
    # Same hex string as the board's USB serial number, so host and board agree on the key.
    return binascii.hexlify(machine.unique_id()).decode().upper()


class Sensors:
    def __init__(self, dht_model, dht_pin, adc_pin):
        pin = machine.Pin(dht_pin)
        self._dht = dht.DHT11(pin) if dht_model == "dht11" else dht.DHT22(pin)
        self._adc = machine.ADC(adc_pin)

    def climate(self):
        # (temperature_c, humidity_pct), or (None, None) when the sensor did not answer.
        try:
            self._dht.measure()
            return self._dht.temperature(), self._dht.humidity()
        except OSError:
            return None, None

    def moisture_raw(self):
        total = 0
        for _ in range(_SAMPLES):
            total += self._adc.read_u16()
        return total // _SAMPLES
