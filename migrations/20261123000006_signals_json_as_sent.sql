-- Signals are written far more often than read, and nothing queries inside their JSON: it is read
-- back whole (API, hypothesis evidence). jsonb made every upsert parse, sort and rebuild each
-- alert's labels and annotations; json stores the projector's text with only a validity check.
-- (Rows converted here keep jsonb's spacing; the API parses both alike.) The raw alert becomes
-- text: the gateway parsed it before it was appended, so a second validation in Postgres checked
-- nothing. Together these cut the upsert's database time by
-- about a third (measured with 100k realistic rows; see the ingest benchmark in the README).
-- A label filter over signals, when one comes, gets its own generated jsonb column and index.
ALTER TABLE signals
    ALTER COLUMN labels TYPE json USING labels::json,
    ALTER COLUMN annotations TYPE json USING annotations::json,
    ALTER COLUMN "values" TYPE json USING "values"::json,
    ALTER COLUMN raw TYPE text USING raw::text;
