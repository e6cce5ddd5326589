"""The wire to each venue: its client library, credentials and error codes, translated into paperbot's
values. Imported only by the feed or broker that needs it (its client library is slow to import)."""
