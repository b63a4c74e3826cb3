//! In-memory cache of directory answers (SPEC §5, CHANNELS.md §2): positive answers for `cache_ttl_seconds`,
//! negative ones ("not found", "no first name", "deceased") for `negative_cache_ttl_seconds`. Failures are
//! never cached, so the next attempt asks again. PII lives here and nowhere else: the cache is process memory.
//!
//! Generic over the directory's result type, so BGS (first names) and MPI (ICNs) share one implementation:
//! each result type says, through [`Cacheable`], whether and how long it may be remembered.

use std::future::Future;
use std::marker::PhantomData;
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::future::Cache;

use super::{Contact, ContactError};
use crate::memory::CacheBounds;

/// How long a lookup result may be remembered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Freshness {
    /// A found person: `cache_ttl_seconds`.
    Positive,
    /// A definite "no" from the directory: `negative_cache_ttl_seconds`.
    Negative,
    /// A failure (transient or misconfiguration): never cached.
    Uncached,
}

/// A lookup result that knows whether it is an answer worth remembering, and what it weighs.
pub(crate) trait Cacheable: Clone + Send + Sync + 'static {
    fn freshness(&self) -> Freshness;

    /// Heap bytes beyond the value itself (for the byte bound; see [`CacheBounds`]).
    fn heap_bytes(&self) -> usize;
}

impl Cacheable for Result<Contact, ContactError> {
    fn freshness(&self) -> Freshness {
        match self {
            Ok(_) => Freshness::Positive,
            Err(ContactError::NotFound | ContactError::NoFirstName) => Freshness::Negative,
            Err(ContactError::Transient(_) | ContactError::Misconfigured(_)) => Freshness::Uncached,
        }
    }

    fn heap_bytes(&self) -> usize {
        match self {
            Ok(contact) => contact.first_name.capacity(),
            Err(_) => 0,
        }
    }
}

/// Per-entry lifetimes: positive and negative answers age differently.
struct AnswerExpiry<R> {
    found: Duration,
    negative: Duration,
    answers: PhantomData<fn(&R)>,
}

impl<R: Cacheable> Expiry<String, R> for AnswerExpiry<R> {
    fn expire_after_create(&self, _key: &String, answer: &R, _created_at: Instant) -> Option<Duration> {
        Some(match answer.freshness() {
            Freshness::Positive => self.found,
            Freshness::Negative => self.negative,
            // Never reaches the cache (see `get_or_fetch`); expiring at once is the safe reading.
            Freshness::Uncached => Duration::ZERO,
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
pub(crate) struct LookupCache<R: Cacheable> {
    answers: Cache<String, R>,
}

/// The first-name cache in front of BGS.
pub(crate) type ContactCache = LookupCache<Result<Contact, ContactError>>;

impl<R: Cacheable> LookupCache<R> {
    pub(crate) fn new(bounds: CacheBounds, ttl: Duration, negative_ttl: Duration) -> Self {
        let answers = Cache::builder()
            .max_capacity(bounds.max_capacity())
            .weigher(move |key: &String, answer: &R| {
                let inline = std::mem::size_of::<String>() + std::mem::size_of::<R>();
                bounds.weight(inline + key.capacity() + answer.heap_bytes())
            })
            .expire_after(AnswerExpiry { found: ttl, negative: negative_ttl, answers: PhantomData })
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
    pub(crate) async fn get_or_fetch(&self, participant_id: &str, fetch: impl Future<Output = R>) -> (R, Origin) {
        let init = async {
            let result = fetch.await;
            match result.freshness() {
                Freshness::Positive | Freshness::Negative => Ok(result),
                Freshness::Uncached => Err(result),
            }
        };
        match self.answers.entry_by_ref(participant_id).or_try_insert_with(init).await {
            Ok(entry) => {
                let origin = if entry.is_fresh() { Origin::Directory } else { Origin::Cache };
                (entry.into_value(), origin)
            }
            Err(failure) => (R::clone(&failure), Origin::Directory),
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
