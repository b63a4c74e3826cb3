//! In-memory cache of lookup answers (SPEC §5): found contacts for `cache_ttl_seconds`, "not found" and
//! "no first name" for `negative_cache_ttl_seconds`. Failures are never cached, so the next attempt asks
//! again. PII lives here and nowhere else: the cache is process memory only.

use std::future::Future;
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::future::Cache;

use super::{Contact, ContactError};
use crate::memory::CacheBounds;

/// An answer worth remembering.
#[derive(Clone)]
enum Answer {
    Found(Contact),
    NotFound,
    NoFirstName,
}

impl Answer {
    /// Heap bytes beyond the enum itself.
    fn heap_bytes(&self) -> usize {
        match self {
            Self::Found(contact) => contact.first_name.capacity(),
            Self::NotFound | Self::NoFirstName => 0,
        }
    }

    /// Splits a lookup result into an answer to cache, or a failure to pass on uncached.
    fn from_result(result: Result<Contact, ContactError>) -> Result<Self, ContactError> {
        match result {
            Ok(contact) => Ok(Self::Found(contact)),
            Err(ContactError::NotFound) => Ok(Self::NotFound),
            Err(ContactError::NoFirstName) => Ok(Self::NoFirstName),
            Err(failure @ (ContactError::Transient(_) | ContactError::Misconfigured(_))) => Err(failure),
        }
    }

    fn into_result(self) -> Result<Contact, ContactError> {
        match self {
            Self::Found(contact) => Ok(contact),
            Self::NotFound => Err(ContactError::NotFound),
            Self::NoFirstName => Err(ContactError::NoFirstName),
        }
    }
}

/// Per-entry lifetimes: positive and negative answers age differently.
struct AnswerExpiry {
    found: Duration,
    negative: Duration,
}

impl Expiry<String, Answer> for AnswerExpiry {
    fn expire_after_create(&self, _key: &String, answer: &Answer, _created_at: Instant) -> Option<Duration> {
        Some(match answer {
            Answer::Found(_) => self.found,
            Answer::NotFound | Answer::NoFirstName => self.negative,
        })
    }
}

/// Where a result came from, for the `source` metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Origin {
    /// Served from memory, including callers that waited for another caller's lookup of the same id.
    Cache,
    /// This call ran the directory lookup.
    Directory,
}

/// Answers by participant id, with concurrent lookups of one id coalesced into a single directory call.
pub(crate) struct ContactCache {
    answers: Cache<String, Answer>,
}

impl ContactCache {
    pub(crate) fn new(bounds: CacheBounds, ttl: Duration, negative_ttl: Duration) -> Self {
        let answers = Cache::builder()
            .max_capacity(bounds.max_capacity())
            .weigher(move |key: &String, answer: &Answer| {
                let inline = std::mem::size_of::<String>() + std::mem::size_of::<Answer>();
                bounds.weight(inline + key.capacity() + answer.heap_bytes())
            })
            .expire_after(AnswerExpiry { found: ttl, negative: negative_ttl })
            .build();
        Self { answers }
    }

    /// (entries, accounted bytes), after applying pending evictions.
    pub(crate) async fn size(&self) -> (u64, u64) {
        self.answers.run_pending_tasks().await;
        (self.answers.entry_count(), self.answers.weighted_size())
    }

    /// The cached answer for `participant_id`, or the result of `fetch`, which runs at most once at a time per
    /// id. Waiters share the fetcher's result, failures included, but failures are not stored.
    pub(crate) async fn get_or_fetch(
        &self,
        participant_id: &str,
        fetch: impl Future<Output = Result<Contact, ContactError>>,
    ) -> (Result<Contact, ContactError>, Origin) {
        let init = async { Answer::from_result(fetch.await) };
        match self.answers.entry_by_ref(participant_id).or_try_insert_with(init).await {
            Ok(entry) => {
                let origin = if entry.is_fresh() { Origin::Directory } else { Origin::Cache };
                (entry.into_value().into_result(), origin)
            }
            Err(failure) => (Err(ContactError::clone(&failure)), Origin::Directory),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    const LONG: Duration = Duration::from_secs(3600);
    const SMALL: CacheBounds = CacheBounds { max_entries: 10, max_bytes: 1 << 20 };

    #[tokio::test]
    async fn bounded_by_entries_and_by_bytes() {
        let by_entries = ContactCache::new(CacheBounds { max_entries: 50, max_bytes: 1 << 30 }, LONG, LONG);
        let by_bytes = ContactCache::new(CacheBounds { max_entries: 1_000_000, max_bytes: 20_000 }, LONG, LONG);
        for i in 0..500 {
            let id = i.to_string();
            by_entries.get_or_fetch(&id, async { Ok(wesley()) }).await.0.unwrap();
            by_bytes.get_or_fetch(&id, async { Ok(wesley()) }).await.0.unwrap();
        }
        let (entries, _) = by_entries.size().await;
        assert!(entries <= 50, "{entries} entries");
        let (entries, bytes) = by_bytes.size().await;
        assert!(bytes <= 20_000 && entries < 100, "{entries} entries, {bytes} bytes");
    }

    fn wesley() -> Contact {
        Contact { first_name: "Wesley".into() }
    }

    #[tokio::test]
    async fn found_is_cached() {
        let cache = ContactCache::new(SMALL, LONG, LONG);
        assert_eq!(cache.get_or_fetch("1", async { Ok(wesley()) }).await, (Ok(wesley()), Origin::Directory));
        let unused = async { panic!("must not be fetched again") };
        assert_eq!(cache.get_or_fetch("1", unused).await, (Ok(wesley()), Origin::Cache));
    }

    #[tokio::test]
    async fn negative_answers_expire_on_their_own_ttl() {
        let cache = ContactCache::new(SMALL, LONG, Duration::from_millis(50));
        let not_found = Err(ContactError::NotFound);
        assert_eq!(cache.get_or_fetch("1", async { Err(ContactError::NotFound) }).await.0, not_found);
        assert_eq!(cache.get_or_fetch("1", async { Ok(wesley()) }).await, (not_found, Origin::Cache));
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_eq!(cache.get_or_fetch("1", async { Ok(wesley()) }).await, (Ok(wesley()), Origin::Directory));
    }

    #[tokio::test]
    async fn failures_are_not_cached() {
        let cache = ContactCache::new(SMALL, LONG, LONG);
        for failure in [ContactError::Transient("bgs_timeout"), ContactError::Misconfigured("bgs_logon_not_found")] {
            let fetched = cache.get_or_fetch("1", async { Err(failure.clone()) }).await;
            assert_eq!(fetched, (Err(failure), Origin::Directory));
        }
        assert_eq!(cache.get_or_fetch("1", async { Ok(wesley()) }).await, (Ok(wesley()), Origin::Directory));
    }

    #[tokio::test]
    async fn concurrent_lookups_of_one_id_fetch_once() {
        let cache = ContactCache::new(SMALL, LONG, LONG);
        let calls = AtomicUsize::new(0);
        let lookup = || async {
            let fetch = async {
                calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok(wesley())
            };
            cache.get_or_fetch("1", fetch).await
        };
        let results = futures::future::join_all((0..8).map(|_| lookup())).await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(results.iter().all(|(r, _)| r == &Ok(wesley())));
        assert_eq!(results.iter().filter(|(_, o)| *o == Origin::Directory).count(), 1);
    }
}
