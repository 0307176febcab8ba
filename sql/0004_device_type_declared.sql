-- A device's type is what the device declares (its startup message) or what USB flashing
-- wrote, never a default: a legacy sender or a gateway's board that was given 'pico_w' by
-- default would be offered Pico-W updates, never answer, time out and halt the rollout.
ALTER TABLE device ALTER COLUMN device_type DROP NOT NULL;
ALTER TABLE device ALTER COLUMN device_type DROP DEFAULT;
UPDATE device SET device_type = NULL WHERE provisioned_at IS NULL;
