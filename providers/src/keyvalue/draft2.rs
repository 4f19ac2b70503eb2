//! `wasi:keyvalue@0.2.0-draft2` (store, atomics with compare-and-swap, batch), served from the
//! same buckets as 0.2.0-draft: a component built against either version sees the same data.
//!
//! Differences from 0.2.0-draft: `list-keys` cursors are strings (the decimal offset of the
//! next page), `increment` is signed (`s64`), `get-many` answers one `(key, option<value>)`
//! entry per requested key, and `atomics` has compare-and-swap: `cas.new` remembers the key's
//! value (and, on NATS, its revision), `swap` writes only if the key has not changed since,
//! else returns `cas-failed` with a fresh `cas` for a retry.

use wasmtime::component::{HasSelf, Linker, Resource};

use trellis_host::runtime::InstanceState;

use super::backend::{timed, CounterRange, OpenBucket, Snapshot, StorageError, LIST_PAGE_SIZE};
use super::{bucket_of, open_bucket, BucketHandle};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit/deps/wasi-keyvalue-0.2.0-draft2",
        world: "wasi:keyvalue/imports",
        imports: { default: async },
        with: {
            "wasi:keyvalue/store.bucket": crate::keyvalue::BucketHandle,
            "wasi:keyvalue/atomics.cas": super::CasHandle,
        },
    });
}

use bindings::wasi::keyvalue::{atomics, batch, store};

/// A compare-and-swap in progress (the `cas` resource's host side).
pub struct CasHandle {
    bucket: OpenBucket,
    key: String,
    snapshot: Snapshot,
}

impl std::fmt::Debug for CasHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CasHandle").field("key", &self.key).finish()
    }
}

/// Adds the 0.2.0-draft2 interfaces to the linker.
pub(super) fn add_to_linker(linker: &mut Linker<InstanceState>) -> anyhow::Result<()> {
    store::add_to_linker::<InstanceState, HasSelf<InstanceState>>(linker, |s| s)?;
    atomics::add_to_linker::<InstanceState, HasSelf<InstanceState>>(linker, |s| s)?;
    batch::add_to_linker::<InstanceState, HasSelf<InstanceState>>(linker, |s| s)?;
    Ok(())
}

impl From<StorageError> for store::Error {
    fn from(error: StorageError) -> Self {
        match error {
            StorageError::NoSuchStore => store::Error::NoSuchStore,
            StorageError::AccessDenied(why) => {
                tracing::debug!(why, "wasi:keyvalue access denied");
                store::Error::AccessDenied
            }
            StorageError::Other(message) => store::Error::Other(message),
        }
    }
}

impl store::Host for InstanceState {
    async fn open(&mut self, identifier: String) -> Result<Resource<BucketHandle>, store::Error> {
        Ok(open_bucket(self, &identifier).await?)
    }
}

impl store::HostBucket for InstanceState {
    async fn get(
        &mut self,
        bucket: Resource<BucketHandle>,
        key: String,
    ) -> Result<Option<Vec<u8>>, store::Error> {
        let (_, open) = bucket_of(self, &bucket)?;
        Ok(timed("keyvalue get", open.get(&key)).await?)
    }

    async fn set(
        &mut self,
        bucket: Resource<BucketHandle>,
        key: String,
        value: Vec<u8>,
    ) -> Result<(), store::Error> {
        let (_, open) = bucket_of(self, &bucket)?;
        Ok(timed("keyvalue set", open.set(&key, value)).await?)
    }

    async fn delete(
        &mut self,
        bucket: Resource<BucketHandle>,
        key: String,
    ) -> Result<(), store::Error> {
        let (_, open) = bucket_of(self, &bucket)?;
        Ok(timed("keyvalue delete", open.delete(&key)).await?)
    }

    async fn exists(
        &mut self,
        bucket: Resource<BucketHandle>,
        key: String,
    ) -> Result<bool, store::Error> {
        let (_, open) = bucket_of(self, &bucket)?;
        Ok(timed("keyvalue exists", open.exists(&key)).await?)
    }

    async fn list_keys(
        &mut self,
        bucket: Resource<BucketHandle>,
        cursor: Option<String>,
    ) -> Result<store::KeyResponse, store::Error> {
        let start = match cursor.as_deref() {
            None | Some("") => 0,
            Some(text) => text.parse::<usize>().map_err(|_| {
                store::Error::Other(format!("`{text}` is not a cursor returned by list-keys"))
            })?,
        };
        let (_, open) = bucket_of(self, &bucket)?;
        let keys = timed("keyvalue list-keys", open.keys()).await?;
        let page: Vec<String> = keys
            .iter()
            .skip(start)
            .take(LIST_PAGE_SIZE)
            .cloned()
            .collect();
        let end = start.saturating_add(page.len());
        let cursor = (end < keys.len()).then(|| end.to_string());
        Ok(store::KeyResponse { keys: page, cursor })
    }

    async fn drop(&mut self, bucket: Resource<BucketHandle>) -> wasmtime::Result<()> {
        self.table().delete(bucket)?;
        Ok(())
    }
}

impl atomics::Host for InstanceState {
    async fn increment(
        &mut self,
        bucket: Resource<BucketHandle>,
        key: String,
        delta: i64,
    ) -> Result<i64, store::Error> {
        let (_, open) = bucket_of(self, &bucket)?;
        let value = timed(
            "keyvalue increment",
            open.increment(&key, i128::from(delta), CounterRange::I64),
        )
        .await?;
        i64::try_from(value)
            .map_err(|_| store::Error::Other(format!("the value of `{key}` is out of range")))
    }

    async fn swap(
        &mut self,
        cas: Resource<CasHandle>,
        value: Vec<u8>,
    ) -> Result<(), atomics::CasError> {
        let handle = self.table().delete(cas).map_err(|e| {
            atomics::CasError::StoreError(store::Error::Other(format!("invalid cas handle: {e}")))
        })?;
        let swapped = timed(
            "keyvalue swap",
            handle.bucket.swap(&handle.key, &handle.snapshot, value),
        )
        .await
        .map_err(|e| atomics::CasError::StoreError(e.into()))?;
        if swapped {
            return Ok(());
        }
        // Hand back a fresh operation so the guest can retry with the current value.
        let snapshot = timed("keyvalue read", handle.bucket.snapshot(&handle.key))
            .await
            .map_err(|e| atomics::CasError::StoreError(e.into()))?;
        let retry = self
            .table()
            .push(CasHandle { snapshot, ..handle })
            .map_err(|e| {
                atomics::CasError::StoreError(store::Error::Other(format!(
                    "cannot store the cas handle: {e}"
                )))
            })?;
        Err(atomics::CasError::CasFailed(retry))
    }
}

impl atomics::HostCas for InstanceState {
    async fn new(
        &mut self,
        bucket: Resource<BucketHandle>,
        key: String,
    ) -> Result<Resource<CasHandle>, store::Error> {
        let (_, open) = bucket_of(self, &bucket)?;
        let snapshot = timed("keyvalue read", open.snapshot(&key)).await?;
        let handle = self
            .table()
            .push(CasHandle {
                bucket: open,
                key,
                snapshot,
            })
            .map_err(|e| StorageError::other("cannot store the cas handle", e))?;
        Ok(handle)
    }

    async fn current(&mut self, cas: Resource<CasHandle>) -> Result<Option<Vec<u8>>, store::Error> {
        self.table()
            .get(&cas)
            .map(|c| c.snapshot.value.clone())
            .map_err(|e| store::Error::Other(format!("invalid cas handle: {e}")))
    }

    async fn drop(&mut self, cas: Resource<CasHandle>) -> wasmtime::Result<()> {
        self.table().delete(cas)?;
        Ok(())
    }
}

impl batch::Host for InstanceState {
    async fn get_many(
        &mut self,
        bucket: Resource<BucketHandle>,
        keys: Vec<String>,
    ) -> Result<Vec<(String, Option<Vec<u8>>)>, store::Error> {
        let (_, open) = bucket_of(self, &bucket)?;
        let values = timed("keyvalue get-many", async {
            let mut values = Vec::with_capacity(keys.len());
            for key in keys {
                let value = open.get(&key).await?;
                values.push((key, value));
            }
            Ok(values)
        })
        .await?;
        Ok(values)
    }

    async fn set_many(
        &mut self,
        bucket: Resource<BucketHandle>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> Result<(), store::Error> {
        let (_, open) = bucket_of(self, &bucket)?;
        timed("keyvalue set-many", async {
            for (key, value) in key_values {
                open.set(&key, value).await?;
            }
            Ok(())
        })
        .await?;
        Ok(())
    }

    async fn delete_many(
        &mut self,
        bucket: Resource<BucketHandle>,
        keys: Vec<String>,
    ) -> Result<(), store::Error> {
        let (_, open) = bucket_of(self, &bucket)?;
        timed("keyvalue delete-many", async {
            for key in keys {
                open.delete(&key).await?;
            }
            Ok(())
        })
        .await?;
        Ok(())
    }
}
