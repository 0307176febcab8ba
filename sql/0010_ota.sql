-- OTA: signed releases, rollouts and their devices, the retained meta the announcer
-- publishes, pins. Every state a device or the hub decides also lands in deploy_event.
-- Forward-only: never edit a migration that has shipped; add a new file.

CREATE TABLE ota_release (
    id          bigserial PRIMARY KEY,
    device_type text NOT NULL,
    version     text NOT NULL CHECK (version ~ '^[0-9]+\.[0-9]+\.[0-9]+$'),
    semver      integer[] NOT NULL CHECK (cardinality(semver) = 3),  -- ordering
    sha256      text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    size        integer NOT NULL CHECK (size > 0),
    notes       text NOT NULL DEFAULT '',
    manifest    text NOT NULL,   -- the release manifest, exactly the signed bytes
    sig         text NOT NULL,   -- base64 Ed25519 over manifest
    key_id      text NOT NULL,
    bad_at      timestamptz,     -- halted or rolled back: never a rollback target
    bad_reason  text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (device_type, version)
);

-- kind: channel (meta on the channel topic), waves (per-device meta, wave by wave),
-- rollback (per-device meta, action rollback), pin (one device, action pin).
CREATE TABLE ota_rollout (
    id                  bigserial PRIMARY KEY,
    release_id          bigint NOT NULL REFERENCES ota_release (id),
    device_type         text NOT NULL,
    version             text NOT NULL,
    kind                text NOT NULL CHECK (kind IN ('channel', 'waves', 'rollback', 'pin')),
    channel             text NOT NULL,
    action              text NOT NULL CHECK (action IN ('install', 'rollback', 'pin')),
    waves               smallint[] NOT NULL,  -- cumulative percentages, last one 100
    max_failure_rate    double precision NOT NULL,
    min_booted          double precision NOT NULL,
    min_devices         integer NOT NULL,
    soak_s              integer NOT NULL,
    timeout_s           integer NOT NULL,
    pause_between_waves boolean NOT NULL DEFAULT false,
    state               text NOT NULL DEFAULT 'running' CHECK (state IN (
                            'running', 'waiting', 'paused', 'halted', 'aborted',
                            'completed', 'rolled_back')),
    current_wave        smallint NOT NULL DEFAULT 0,
    wave_started_at     timestamptz,
    reason              text,
    meta                text NOT NULL,  -- signed meta for the per-device / channel topic
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    finished_at         timestamptz
);
-- One fleet-wide rollout at a time per device type.
CREATE UNIQUE INDEX ota_rollout_one_active ON ota_rollout (device_type)
    WHERE kind IN ('channel', 'waves') AND state IN ('running', 'waiting', 'paused');
CREATE INDEX ota_rollout_state_idx ON ota_rollout (state);

-- The devices of a rollout (snapshot at creation, wave by hash of the device key) and where
-- each one stands. seq is the device's own report counter: a report with a lower seq never
-- moves the state backwards.
CREATE TABLE ota_rollout_device (
    rollout_id  bigint NOT NULL REFERENCES ota_rollout (id),
    device_key  text NOT NULL,
    wave        smallint NOT NULL,
    state       text NOT NULL DEFAULT 'pending',
    reason      text,
    seq         bigint,
    offered_at  timestamptz,   -- its meta went out
    started_at  timestamptz,   -- its first report
    booted_at   timestamptz,   -- booted_ok
    healthy_at  timestamptz,   -- valid telemetry after booted_ok + soak
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (rollout_id, device_key)
);
CREATE INDEX ota_rollout_device_key_idx ON ota_rollout_device (device_key, rollout_id);
CREATE INDEX ota_rollout_device_open_idx ON ota_rollout_device (rollout_id)
    WHERE state IN ('offered', 'received', 'downloading', 'verified', 'applied', 'booted_ok');

-- What each device last reported (any rollout), with its report counter.
CREATE TABLE ota_device_state (
    device_key  text PRIMARY KEY,
    rollout_id  bigint REFERENCES ota_rollout (id),
    version     text,
    state       text NOT NULL,
    reason      text,
    seq         bigint NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- The retained meta every OTA topic should hold ('' = cleared). The announcer publishes a
-- row whenever rev moves past published_rev, and every row when it (re)connects, because a
-- broker may have lost its retained store.
CREATE SEQUENCE ota_meta_rev_seq;
CREATE TABLE ota_meta (
    id            bigserial PRIMARY KEY,
    device_type   text NOT NULL,
    channel       text,   -- channel topic ...
    device_key    text,   -- ... or per-device topic
    payload       text NOT NULL,
    rollout_id    bigint REFERENCES ota_rollout (id),
    rev           bigint NOT NULL DEFAULT nextval('ota_meta_rev_seq'),
    published_rev bigint NOT NULL DEFAULT 0,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CHECK ((channel IS NULL) <> (device_key IS NULL))
);
ALTER SEQUENCE ota_meta_rev_seq OWNED BY ota_meta.rev;
CREATE UNIQUE INDEX ota_meta_device_uq ON ota_meta (device_key) WHERE device_key IS NOT NULL;
CREATE UNIQUE INDEX ota_meta_channel_uq ON ota_meta (device_type, channel) WHERE channel IS NOT NULL;
CREATE INDEX ota_meta_dirty_idx ON ota_meta (id) WHERE rev > published_rev;

CREATE TABLE ota_pin (
    device_key  text PRIMARY KEY,
    release_id  bigint NOT NULL REFERENCES ota_release (id),
    rollout_id  bigint NOT NULL REFERENCES ota_rollout (id),
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Rollout-level decisions (wave started/done, waiting, halted, completed, paused, ...).
CREATE TABLE ota_rollout_event (
    id          bigserial PRIMARY KEY,
    rollout_id  bigint NOT NULL REFERENCES ota_rollout (id),
    event       text NOT NULL,
    wave        smallint,
    detail      jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ota_rollout_event_idx ON ota_rollout_event (rollout_id, id);

-- Redelivered status reports are recognised by (device, seq).
CREATE INDEX deploy_event_ota_seq_idx ON deploy_event (device_key, seq) WHERE source = 'ota';
