-- An operator acknowledges an open alert ("seen, on it"); it stays open until its condition
-- clears. The dashboard groups alerts as open, acknowledged (open and acked) and closed.
ALTER TABLE alert ADD COLUMN acked_at timestamptz;
