-- Deleting a bundle (DELETE /v1/bundles/{name}, `stockade bundle delete`) retires its versions
-- instead of removing them: runs already created keep the version they pinned (get_version still
-- finds it, and receipts still name its digest), while `latest` and the listing skip retired rows,
-- so new runs by that name get the platform bundle of the name, or bundle.not_found. Registering
-- the name again makes it current again (a re-registered digest is un-retired). Existing rows: live.
-- The table keeps its row-level security (0006): a tenant retires only its own rows.
ALTER TABLE bundle_versions ADD COLUMN retired_at double precision;
