-- What a device runs, as it last said so: the version of its newest booted_ok report. Other
-- reports leave it alone (a download of something else does not change what runs; after a
-- rolled_back the backup, i.e. this version, runs again). A rollout is done with a device
-- only while the device runs the rollout's version (issue 19: "completed" while devices ran
-- another version).
ALTER TABLE ota_device_state ADD COLUMN running_version text;
UPDATE ota_device_state SET running_version = version WHERE state = 'booted_ok';
