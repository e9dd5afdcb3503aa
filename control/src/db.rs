//! Opening the database: WAL, `synchronous=FULL`, foreign keys, embedded migrations, the
//! control plane's identity and its epoch.

use crate::{Error, Result, now};
use sqlx::any::AnyPoolOptions;
use sqlx::{Any, AnyConnection, AnyPool, Transaction};
use std::path::Path;

/// File name of the database inside the data directory.
pub const DATABASE_FILE: &str = "etc-shadow.db";

/// The engine under the store. Queries are one text for both (`$1` placeholders, SQL
/// both understand); [`Db::engine`] picks the few that differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// A file in the data directory: one control plane.
    Sqlite,
    /// A PostgreSQL database shared by the replicas of a control plane.
    Postgres,
}

/// Where the database is: the data directory's SQLite file unless a PostgreSQL URL is
/// given (`--database`, `ETC_SHADOW_DATABASE`).
pub fn engine_of(database: Option<&str>) -> Result<Engine> {
    match database {
        None => Ok(Engine::Sqlite),
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => Ok(Engine::Postgres),
        Some(_) => Err(Error::BadRequest(
            "--database takes a PostgreSQL URL (postgres://user@host:port/name); without it the database is the data directory's SQLite file".into(),
        )),
    }
}

/// Two pools: many readers, one writer. On SQLite the single writer connection serialises
/// write transactions in the process, so they never fail with `SQLITE_BUSY` upgrading a
/// read snapshot, and readers in WAL mode never wait for it. On PostgreSQL every write
/// transaction also takes one transaction-level advisory lock first, so write
/// transactions are serialised across every replica as they are inside one process:
/// what a transaction reads it still holds when it writes.
#[derive(Clone, Debug)]
pub struct Db {
    pub read: AnyPool,
    write: AnyPool,
    engine: Engine,
    /// Set while the writer connection has `synchronous=NORMAL` for a relaxed transaction.
    relaxed: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Seals and opens what is encrypted at rest (see [`crate::secrets`]).
    pub keys: std::sync::Arc<crate::secrets::Keyring>,
    /// Key names whose values are secret inside structured entries (see
    /// [`domain::redact`]); set once at start, before the handle is shared.
    pub secret_keys: std::sync::Arc<domain::redact::SecretKeys>,
    /// Webhooks may reach loopback, private and link-local addresses (see
    /// [`crate::webhooks`]); set once at start.
    pub webhook_internal: bool,
    /// A handle of the leader's work (see [`Db::fenced`]): its write transactions belong
    /// to a term.
    fence: Option<TermFence>,
}

/// The term a handle writes for: the epoch it was won with, or nothing while its owner
/// does not lead. Shared by the handles of one process's leader work (the coordinator,
/// the drift monitor, webhook deliveries, drills) and moved by the coordinator.
#[derive(Clone, Debug, Default)]
pub struct TermFence(std::sync::Arc<std::sync::RwLock<Option<i64>>>);

impl TermFence {
    pub fn new(epoch: Option<i64>) -> TermFence {
        TermFence(std::sync::Arc::new(std::sync::RwLock::new(epoch)))
    }

    pub fn set(&self, epoch: Option<i64>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = epoch;
    }

    pub fn get(&self) -> Option<i64> {
        *self.0.read().unwrap_or_else(|p| p.into_inner())
    }
}

/// Creates `dir` and what is missing above it owner-only (an existing directory is left as
/// it is).
pub fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|err| Error::Internal(format!("cannot create {}: {err}", dir.display())))
}

/// Makes the data directory owner-only, creating it so or making an existing one so: it
/// holds the database (password and session hashes, sealed secrets) and the key file, and
/// nothing in it is anyone else's to read.
pub fn private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if !dir.exists() {
        return create_private_dir(dir);
    }
    // An existing directory is tightened only when it is empty or a data directory
    // already (it holds the database or the key file): a mistyped --data-dir such as a
    // home directory is left as it is (and refused later).
    let empty = std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_none());
    if !empty && !dir.join(DATABASE_FILE).exists() && !dir.join(crate::secrets::KEY_FILE).exists() {
        return Ok(());
    }
    let failed = |err: std::io::Error| Error::Internal(format!("cannot read {}: {err}", dir.display()));
    let mode = std::fs::metadata(dir).map_err(failed)?.permissions().mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|err| Error::Internal(format!("cannot make {} private: {err}", dir.display())))?;
    }
    Ok(())
}

/// Makes the database's files owner-only (SQLite makes them with the process's umask).
fn private_database_files(data_dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for suffix in ["", "-wal", "-shm"] {
        let path = data_dir.join(format!("{DATABASE_FILE}{suffix}"));
        match std::fs::metadata(&path) {
            Ok(meta) if meta.permissions().mode() & 0o077 != 0 => {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                    .map_err(|err| Error::Internal(format!("cannot make {} private: {err}", path.display())))?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// Refuses a missing or empty database in a directory that holds anything else.
fn refuse_missing_database(data_dir: &Path) -> Result<()> {
    let missing = match std::fs::metadata(data_dir.join(DATABASE_FILE)) {
        Ok(meta) => meta.len() == 0,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => true,
        Err(err) => return Err(Error::Internal(format!("cannot read {}: {err}", data_dir.display()))),
    };
    if !missing {
        return Ok(());
    }
    let entries = match std::fs::read_dir(data_dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(Error::Internal(format!("cannot list {}: {err}", data_dir.display()))),
    };
    let mut found: Vec<String> = entries
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        // The lock is taken before the database is opened; SQLite's own side files of a
        // database that was never written say nothing.
        .filter(|name| name != crate::lock::LOCK_FILE && name != DATABASE_FILE && !name.starts_with(&format!("{DATABASE_FILE}-")))
        .collect();
    if found.is_empty() {
        return Ok(());
    }
    found.sort();
    Err(Error::conflict(
        "database_missing",
        format!(
            "{} has no database ({DATABASE_FILE} is missing or empty) but holds {}: this looks like a control plane whose database was lost. \
             Restore the database from a backup, or start a new control plane here with --initialize",
            data_dir.display(),
            found.join(", ")
        ),
    ))
}

/// On PostgreSQL the database and the key file that seals its secrets live apart (the key
/// in each replica's data directory). A database that holds a control plane is refused
/// with no key here (a new key would be made, and every sealed value and the audit
/// chain's key would not open with it: copy the key file from another replica); a key
/// file beside a database with no control plane is a lost or wrong database, refused
/// unless `initialize` (as a data directory with a key file and no SQLite file is).
async fn refuse_mismatched_keys(data_dir: &Path, url: &str, initialize: bool) -> Result<()> {
    use sqlx::Connection;
    sqlx::any::install_default_drivers();
    let has_keys = match crate::secrets::Keyring::source_for(data_dir) {
        crate::secrets::KeySource::Env => true,
        crate::secrets::KeySource::File(path) => path.exists(),
    };
    let mut conn = AnyConnection::connect(url).await?;
    let (exists,): (bool,) = sqlx::query_as("SELECT to_regclass('control_plane') IS NOT NULL")
        .fetch_one(&mut conn)
        .await?;
    let plane: Option<(String,)> = if exists {
        sqlx::query_as("SELECT id FROM control_plane").fetch_optional(&mut conn).await?
    } else {
        None
    };
    let _ = conn.close().await;
    match (plane, has_keys) {
        (Some((id,)), false) => Err(Error::conflict(
            "key_missing",
            format!(
                "the database holds control plane {id}, but {} has no key file: copy the key file of a server of this control plane \
                 there (every server of one control plane needs the same one), or set {}",
                data_dir.display(),
                crate::secrets::KEY_ENV
            ),
        )),
        (None, true) if !initialize => Err(Error::conflict(
            "database_missing",
            format!(
                "{} holds a key file but the database holds no control plane: this looks like a control plane whose database was lost. \
                 Restore the database from a backup, or start a new control plane in it with --initialize",
                data_dir.display()
            ),
        )),
        _ => Ok(()),
    }
}

/// A write transaction and the audit chain's key. It is the connection for queries
/// (`&mut *tx`), and commits like a transaction; dropped without a commit, it rolls back.
pub struct Tx {
    inner: Transaction<'static, Any>,
    chain: domain::audit::ChainKey,
}

/// The database file's path as the Any driver's SQLite URL takes it: absolute (a
/// relative first component would be read as a host name, lower-cased), every byte but
/// unreserved ones percent-encoded (`?`, `#`, `%` and spaces are a file name's here).
fn sqlite_path(path: &Path) -> Result<String> {
    let absolute = std::path::absolute(path).map_err(|err| Error::Internal(format!("cannot resolve {}: {err}", path.display())))?;
    let text = absolute
        .to_str()
        .ok_or_else(|| Error::BadRequest(format!("{} is no UTF-8 path", absolute.display())))?;
    Ok(text
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'/' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect())
}

/// A yes-or-no column, stored as the integer 0 or 1 on both engines (SQLite has no other
/// boolean, and one type for both keeps every query's text the same). Read a column into a
/// `bool` field with `#[sqlx(try_from = "Flag")]`, bind a `bool` as `Flag::from(x)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flag(pub bool);

impl From<Flag> for bool {
    fn from(flag: Flag) -> bool {
        flag.0
    }
}

impl From<bool> for Flag {
    fn from(value: bool) -> Flag {
        Flag(value)
    }
}

impl sqlx::Type<Any> for Flag {
    fn type_info() -> sqlx::any::AnyTypeInfo {
        <i64 as sqlx::Type<Any>>::type_info()
    }

    fn compatible(ty: &sqlx::any::AnyTypeInfo) -> bool {
        <i64 as sqlx::Type<Any>>::compatible(ty)
    }
}

impl<'r> sqlx::Decode<'r, Any> for Flag {
    fn decode(value: sqlx::any::AnyValueRef<'r>) -> std::result::Result<Self, sqlx::error::BoxDynError> {
        Ok(Flag(<i64 as sqlx::Decode<Any>>::decode(value)? != 0))
    }
}

impl<'q> sqlx::Encode<'q, Any> for Flag {
    fn encode_by_ref(
        &self,
        buf: &mut <Any as sqlx::Database>::ArgumentBuffer<'q>,
    ) -> std::result::Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        <i64 as sqlx::Encode<Any>>::encode_by_ref(&i64::from(self.0), buf)
    }
}

/// The advisory lock a serving control plane holds on PostgreSQL for as long as it runs
/// (a different number from [`WRITE_LOCK`]).
const SERVING_LOCK: i64 = 0x0065_7463_7368_6473;

/// A server's hold on its database (see [`Db::lock_serving`]); let go by
/// [`ServingLock::release`] or when the process ends.
pub struct ServingLock(tokio::sync::Mutex<Option<AnyConnection>>);

impl ServingLock {
    pub async fn release(&self) {
        use sqlx::Connection;
        if let Some(conn) = self.0.lock().await.take() {
            let _ = conn.close().await;
        }
    }
}

/// The advisory lock every write transaction on PostgreSQL takes (any constant that is
/// this program's: "etcshdw" in ASCII).
const WRITE_LOCK: i64 = 0x0065_7463_7368_6477;

impl Tx {
    pub async fn commit(self) -> Result<()> {
        Ok(self.inner.commit().await?)
    }

    pub(crate) fn chain_key(&self) -> &domain::audit::ChainKey {
        &self.chain
    }
}

impl std::ops::Deref for Tx {
    type Target = AnyConnection;
    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

impl std::ops::DerefMut for Tx {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.inner
    }
}

/// This control plane's fencing identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub id: String,
    pub epoch: i64,
}

impl Db {
    /// Opens the database in `data_dir` and applies migrations; creates it only in an
    /// empty (or new) directory, see [`Db::open_or_initialize`].
    pub async fn open(data_dir: &Path) -> Result<Db> {
        Self::open_or_initialize(data_dir, false).await
    }

    /// Opens the database in `data_dir`, creating it when missing. A directory that holds
    /// a control plane's state (a key file, shadow state) but no database, or an empty
    /// one, is refused unless `initialize`: a deleted database next to its keys must not
    /// silently start a brand-new control plane that the shadows would then refuse.
    pub async fn open_or_initialize(data_dir: &Path, initialize: bool) -> Result<Db> {
        Self::open_at(data_dir, None, initialize).await
    }

    /// As [`Db::open_or_initialize`], the database being `database` (a PostgreSQL URL)
    /// when given. The data directory keeps the key file either way: every replica of
    /// one control plane needs the same one.
    pub async fn open_at(data_dir: &Path, database: Option<&str>, initialize: bool) -> Result<Db> {
        if !initialize && database.is_none() {
            refuse_missing_database(data_dir)?;
        }
        private_dir(data_dir)?;
        if let Some(url) = database {
            refuse_mismatched_keys(data_dir, url, initialize).await?;
        }
        let keys = crate::secrets::Keyring::load_or_create(data_dir)?;
        Self::open_with_keys(data_dir, database, keys).await
    }

    /// Opens an existing database with the given keys (a rotation opens it with both);
    /// never makes a new one where other state is.
    pub async fn open_with(data_dir: &Path, database: Option<&str>, keys: crate::secrets::Keyring) -> Result<Db> {
        if database.is_none() {
            refuse_missing_database(data_dir)?;
        }
        Self::open_with_keys(data_dir, database, keys).await
    }

    async fn open_with_keys(data_dir: &Path, database: Option<&str>, keys: crate::secrets::Keyring) -> Result<Db> {
        sqlx::any::install_default_drivers();
        private_dir(data_dir)?;
        let engine = engine_of(database)?;
        let relaxed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (read, write) = match (engine, database) {
            (Engine::Postgres, Some(url)) => {
                let write = AnyPoolOptions::new().max_connections(1).connect(url).await?;
                sqlx::migrate!("../migrations/postgres").run(&write).await?;
                let read = AnyPoolOptions::new().max_connections(8).connect(url).await?;
                (read, write)
            }
            _ => {
                let path = sqlite_path(&data_dir.join(DATABASE_FILE))?;
                // A relaxed transaction (see [`Db::begin_relaxed`]) leaves its connection
                // with `synchronous=NORMAL`; it is set back before anyone else gets it.
                let left_relaxed = relaxed.clone();
                let write = AnyPoolOptions::new()
                    .max_connections(1)
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            // WAL, every commit fsynced, foreign keys; deleted rows are
                            // overwritten, not left in free pages: no old plaintext lingers.
                            for pragma in [
                                "PRAGMA busy_timeout = 10000",
                                "PRAGMA journal_mode = WAL",
                                "PRAGMA synchronous = FULL",
                                "PRAGMA foreign_keys = ON",
                                "PRAGMA secure_delete = ON",
                            ] {
                                sqlx::query(pragma).execute(&mut *conn).await?;
                            }
                            Ok(())
                        })
                    })
                    .after_release(move |conn, _| {
                        let left_relaxed = left_relaxed.clone();
                        Box::pin(async move {
                            if !left_relaxed.swap(false, std::sync::atomic::Ordering::SeqCst) {
                                return Ok(true);
                            }
                            // Kept only when it is durable again (otherwise closed: a new
                            // connection starts with `synchronous=FULL`).
                            Ok(sqlx::query("PRAGMA synchronous = FULL").execute(&mut *conn).await.is_ok())
                        })
                    })
                    .connect(&format!("sqlite://{path}?mode=rwc"))
                    .await?;
                sqlx::migrate!("../migrations/sqlite").run(&write).await?;
                private_database_files(data_dir)?;
                let read = AnyPoolOptions::new()
                    .max_connections(8)
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            for pragma in ["PRAGMA busy_timeout = 10000", "PRAGMA foreign_keys = ON"] {
                                sqlx::query(pragma).execute(&mut *conn).await?;
                            }
                            Ok(())
                        })
                    })
                    .connect(&format!("sqlite://{path}?mode=ro"))
                    .await?;
                (read, write)
            }
        };
        let db = Db {
            read,
            write,
            engine,
            relaxed,
            keys: std::sync::Arc::new(keys),
            secret_keys: std::sync::Arc::default(),
            webhook_internal: false,
            fence: None,
        };
        db.initialise().await?;
        crate::secrets::check_keys(&db).await?;
        crate::audit::key_the_chain(&db).await?;
        crate::secrets::seal_stored(&db, false).await?;
        Ok(db)
    }

    /// Makes this process the one server of its database. On SQLite the data directory's
    /// lock does that (`lock::DataDirLock`); on PostgreSQL a session advisory lock, held on
    /// a connection of its own until [`ServingLock::release`] or the process's end (the
    /// database lets go of a dead client's locks with its connection). Two servers over one
    /// database would each recover the other's rollouts as interrupted, deliver webhooks
    /// twice and fence each other on the shadows: until the replicas of a control plane
    /// elect one leader, one server serves a database.
    pub async fn lock_serving(&self) -> Result<ServingLock> {
        self.hold_serving_lock(false).await
    }

    /// A replica's hold on its database (`serve --etcd`): shared with the other replicas,
    /// which elect the one that writes, and never with a sole server, which would raise
    /// the epoch under them (and they under it).
    pub async fn lock_serving_as_replica(&self) -> Result<ServingLock> {
        self.hold_serving_lock(true).await
    }

    /// The sole server's hold on the PostgreSQL database at `database`, taken on a
    /// connection of its own before the database is opened (so a command refused by it,
    /// `secrets rotate`, has changed nothing, not even the schema). Nothing for SQLite,
    /// whose data directory lock serves.
    pub async fn lock_serving_before_open(database: Option<&str>) -> Result<ServingLock> {
        if engine_of(database)? != Engine::Postgres {
            return Ok(ServingLock(tokio::sync::Mutex::new(None)));
        }
        let Some(url) = database else {
            return Ok(ServingLock(tokio::sync::Mutex::new(None)));
        };
        sqlx::any::install_default_drivers();
        use sqlx::Connection;
        let conn = AnyConnection::connect(url).await?;
        Self::take_serving_lock(conn, false).await
    }

    async fn hold_serving_lock(&self, shared: bool) -> Result<ServingLock> {
        if self.engine != Engine::Postgres {
            return Ok(ServingLock(tokio::sync::Mutex::new(None)));
        }
        let conn = self.read.acquire().await?.detach();
        Self::take_serving_lock(conn, shared).await
    }

    async fn take_serving_lock(mut conn: AnyConnection, shared: bool) -> Result<ServingLock> {
        let query = if shared {
            "SELECT pg_try_advisory_lock_shared($1)"
        } else {
            "SELECT pg_try_advisory_lock($1)"
        };
        let (held,): (bool,) = sqlx::query_as(query).bind(SERVING_LOCK).fetch_one(&mut conn).await?;
        if !held {
            return Err(Error::conflict(
                "server_running",
                if shared {
                    "an etc-shadow server without --etcd is serving this database; stop it before starting replicas"
                } else {
                    "another etc-shadow server is serving this database; one server serves a database (stop it first), or run replicas with --etcd"
                },
            ));
        }
        Ok(ServingLock(tokio::sync::Mutex::new(Some(conn))))
    }

    /// The engine under the store.
    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// The writer pool, for single statements outside a transaction.
    pub fn read_write(&self) -> &AnyPool {
        &self.write
    }

    /// Starts a write transaction on the single writer connection. It carries the audit
    /// chain's key, so a row appended inside it is keyed (see [`crate::audit::append`]).
    pub async fn begin(&self) -> Result<Tx> {
        let mut inner = self.write.begin().await?;
        self.serialise(&mut inner).await?;
        self.check_term(&mut inner).await?;
        Ok(Tx {
            inner,
            chain: self.keys.audit_key(),
        })
    }

    /// This handle fenced by `fence`: each write transaction begun through it is refused
    /// (`not_leader`) unless the fence holds an epoch and that epoch is still the stored
    /// one, checked inside the transaction under the write lock, so no other replica can
    /// take a later epoch before it ends. A leader that lost its term, however late its
    /// tasks wake (SIGSTOP, a long pause), writes nothing.
    pub fn fenced(&self, fence: TermFence) -> Db {
        Db {
            fence: Some(fence),
            ..self.clone()
        }
    }

    async fn check_term(&self, conn: &mut sqlx::AnyConnection) -> Result<()> {
        let Some(fence) = &self.fence else {
            return Ok(());
        };
        let Some(epoch) = fence.get() else {
            return Err(crate::Error::NotLeader { leader: None });
        };
        let stored = Self::stored_epoch(conn).await?;
        if stored != epoch {
            tracing::warn!(epoch, stored, "a write of an ended term refused");
            return Err(crate::Error::NotLeader { leader: None });
        }
        Ok(())
    }

    /// On PostgreSQL, waits for the write lock every replica takes (see [`Db`]); it is
    /// let go when the transaction ends.
    async fn serialise(&self, tx: &mut Transaction<'static, Any>) -> Result<()> {
        if self.engine == Engine::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(WRITE_LOCK)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    /// Starts a write transaction whose commit is not fsynced on its own: it becomes
    /// durable with the next durable commit (the WAL is written in order, and a durable
    /// commit fsyncs everything before it), or is lost with the ones after it on a power
    /// failure, never torn and never out of order. For journal writes that recovery
    /// can do without: a shadow's answer while others are still awaited (lost, the
    /// shadow is asked again), never a decision, an end or an operator's action.
    pub async fn begin_relaxed(&self) -> Result<Tx> {
        if self.engine == Engine::Postgres {
            // Every commit is made durable by the server (its own `synchronous_commit`).
            return self.begin().await;
        }
        let mut conn = self.write.acquire().await?;
        self.relaxed.store(true, std::sync::atomic::Ordering::SeqCst);
        sqlx::query("PRAGMA synchronous = NORMAL").execute(&mut *conn).await?;
        let mut inner = Transaction::begin(conn, None).await?;
        self.check_term(&mut inner).await?;
        Ok(Tx {
            // What `Pool::begin` does with the connection it acquires.
            inner,
            chain: self.keys.audit_key(),
        })
    }

    /// Makes the control plane's id and revision 0 the first time the database is opened.
    async fn initialise(&self) -> Result<()> {
        let mut tx = self.begin().await?;
        let exists: Option<(String,)> = sqlx::query_as("SELECT id FROM control_plane").fetch_optional(&mut *tx).await?;
        if exists.is_none() {
            let id = hex::encode(rand::random::<[u8; 16]>());
            let at = now();
            sqlx::query("INSERT INTO control_plane (singleton, id, epoch, created_at) VALUES (1, $1, 0, $2)")
                .bind(&id)
                .bind(&at)
                .execute(&mut *tx)
                .await?;
            let empty_root = domain::hash::root_hash([]).to_hex();
            sqlx::query(
                "INSERT INTO revisions (number, root, parent, author, message, created_at) VALUES (0, $1, NULL, 'system', 'empty configuration', $2)",
            )
            .bind(&empty_root)
            .bind(&at)
            .execute(&mut *tx)
            .await?;
            crate::audit::append(
                &mut tx,
                "system",
                "control_plane.create",
                &format!("control_plane/{id}"),
                serde_json::json!({"root": empty_root}),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Raises the epoch durably; called once at every start of the server.
    pub async fn raise_epoch(&self) -> Result<Identity> {
        let mut tx = self.begin().await?;
        let (id, epoch): (String, i64) = sqlx::query_as("UPDATE control_plane SET epoch = epoch + 1 RETURNING id, epoch")
            .fetch_one(&mut *tx)
            .await?;
        crate::audit::append(
            &mut tx,
            "system",
            "control_plane.start",
            &format!("control_plane/{id}"),
            serde_json::json!({"epoch": epoch}),
        )
        .await?;
        tx.commit().await?;
        Ok(Identity { id, epoch })
    }

    /// The control plane's identity as stored (its latest epoch), without raising it: what
    /// a replica that does not lead knows.
    pub async fn identity(&self) -> Result<Identity> {
        let (id, epoch): (String, i64) = sqlx::query_as("SELECT id, epoch FROM control_plane").fetch_one(&self.read).await?;
        Ok(Identity { id, epoch })
    }

    /// Takes the epoch of a term won in an election: the leader key's etcd create
    /// `revision`, unless the database has seen that epoch or a later one (an etcd cluster
    /// rebuilt, a control plane that ran alone before), then one more than the newest. The
    /// epoch only grows, so a deposed leader's journal writes ([`crate::rollouts`] checks
    /// the stored epoch in each) and its shadow writes (the shadows keep the highest
    /// epoch seen) are refused once this one is in.
    ///
    /// `still_leading` is asked last, inside the transaction (under the write lock): a
    /// replica whose term ended while it waited for the lock (a pause, a slow database)
    /// must not move the epoch past its successor's, which would fence the successor's
    /// every write for as long as it leads.
    pub async fn take_leadership<F>(&self, revision: i64, replica: &str, still_leading: F) -> Result<Identity>
    where
        F: std::future::Future<Output = std::result::Result<(), String>>,
    {
        let mut tx = self.begin().await?;
        let (id, epoch): (String, i64) =
            sqlx::query_as("UPDATE control_plane SET epoch = CASE WHEN epoch < $1 THEN $1 ELSE epoch + 1 END RETURNING id, epoch")
                .bind(revision)
                .fetch_one(&mut *tx)
                .await?;
        crate::audit::append(
            &mut tx,
            "system",
            "control_plane.lead",
            &format!("control_plane/{id}"),
            serde_json::json!({"epoch": epoch, "replica": replica, "revision": revision}),
        )
        .await?;
        still_leading.await.map_err(|err| {
            tracing::warn!(%err, "the term ended before its epoch was taken");
            Error::NotLeader { leader: None }
        })?;
        tx.commit().await?;
        Ok(Identity { id, epoch })
    }

    /// The epoch stored now, read inside a write transaction (so no other writer can
    /// move it before that transaction ends).
    pub async fn stored_epoch(conn: &mut sqlx::AnyConnection) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT epoch FROM control_plane").fetch_one(conn).await?)
    }

    pub async fn close(&self) {
        self.read.close().await;
        self.write.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    /// A leader's handle writes only while its term's epoch is the stored one: once
    /// another replica took a later epoch, every write transaction through it is refused,
    /// however late it comes (a leader woken from SIGSTOP); with no term, none at all.
    #[tokio::test]
    async fn a_handle_fenced_by_an_ended_term_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open_or_initialize(dir.path(), true).await.unwrap();
        let first = db.raise_epoch().await.unwrap();
        let fence = TermFence::new(Some(first.epoch));
        let leader = db.fenced(fence.clone());
        leader.begin().await.unwrap().commit().await.unwrap();
        // Another replica wins a term: its leader key's revision is the epoch.
        let next = db.take_leadership(first.epoch + 10, "b", async { Ok(()) }).await.unwrap();
        assert_eq!(next.epoch, first.epoch + 10);
        assert!(matches!(leader.begin().await, Err(Error::NotLeader { .. })));
        assert!(matches!(leader.begin_relaxed().await, Err(Error::NotLeader { .. })));
        // Unfenced handles (people's edits on any replica) write on.
        db.begin().await.unwrap().commit().await.unwrap();
        fence.set(None);
        assert!(matches!(leader.begin().await, Err(Error::NotLeader { .. })), "no term, no write");
        fence.set(Some(next.epoch));
        leader.begin().await.unwrap().commit().await.unwrap();
        // A replica whose term ended before it got the lock takes nothing.
        let ended = db
            .take_leadership(first.epoch + 20, "late", async { Err("the lease has ended".to_string()) })
            .await;
        assert!(matches!(ended, Err(Error::NotLeader { .. })));
        leader.begin().await.unwrap().commit().await.unwrap();
        // A revision below the stored epoch (etcd rebuilt) still moves the epoch on.
        let again = db.take_leadership(3, "c", async { Ok(()) }).await.unwrap();
        assert_eq!(again.epoch, next.epoch + 1);
        assert!(matches!(leader.begin().await, Err(Error::NotLeader { .. })));
    }

    #[tokio::test]
    async fn a_relaxed_transaction_leaves_the_writer_durable_again() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open_or_initialize(dir.path(), true).await.unwrap();
        let level = || async {
            sqlx::query_scalar::<_, i64>("PRAGMA synchronous")
                .fetch_one(db.read_write())
                .await
                .unwrap()
        };
        // 2 is FULL, 1 is NORMAL.
        assert_eq!(level().await, 2);
        let mut tx = db.begin_relaxed().await.unwrap();
        assert_eq!(
            sqlx::query_scalar::<_, i64>("PRAGMA synchronous")
                .fetch_one(&mut *tx)
                .await
                .unwrap(),
            1
        );
        sqlx::query("UPDATE control_plane SET epoch = epoch")
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(level().await, 2, "after a relaxed commit");
        // Dropped without a commit (rolled back) it is the same.
        let tx = db.begin_relaxed().await.unwrap();
        drop(tx);
        assert_eq!(level().await, 2, "after a relaxed transaction rolled back");
        let tx = db.begin().await.unwrap();
        tx.commit().await.unwrap();
        assert_eq!(level().await, 2);
    }

    /// Through the Any driver the SQLite file is named by a URL: a relative directory's
    /// first component would be a host name (lower-cased), `?` a query, `#` a fragment.
    /// Each of these directories gets its own database file, where the name says.
    #[tokio::test]
    async fn a_data_directory_with_any_name_holds_its_own_database() {
        let root = tempfile::tempdir().unwrap();
        let names = ["Data", "with space", "what?", "number#1", "100%", "ünï"];
        for name in names {
            let dir = root.path().join(name);
            let db = Db::open_or_initialize(&dir, true).await.unwrap();
            db.close().await;
            assert!(dir.join(DATABASE_FILE).exists(), "{name}: the database is inside it");
        }
        // And nothing anywhere else.
        let mut found: Vec<String> = std::fs::read_dir(root.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        found.sort();
        let mut expected: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        expected.sort();
        assert_eq!(found, expected);
        // A relative directory with capitals, from its parent.
        let relative = std::path::Path::new("Relative-Data");
        let here = std::env::current_dir().unwrap();
        std::env::set_current_dir(root.path()).unwrap();
        let opened = Db::open_or_initialize(relative, true).await;
        std::env::set_current_dir(here).unwrap();
        opened.unwrap().close().await;
        assert!(root.path().join("Relative-Data").join(DATABASE_FILE).exists());
        assert!(!root.path().join("relative-data").exists());
    }

    #[tokio::test]
    async fn the_data_directory_the_database_and_the_key_file_are_owner_only() {
        let root = tempfile::tempdir().unwrap();
        // A data directory made by hand with the usual umask is made private at open.
        let data = root.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
        let db = Db::open_or_initialize(&data, true).await.unwrap();
        db.close().await;
        assert_eq!(mode(&data), 0o700);
        for name in [DATABASE_FILE, crate::secrets::KEY_FILE] {
            assert_eq!(mode(&data.join(name)), 0o600, "{name}");
        }
        // A directory with other things in it (a mistyped --data-dir) is left as it is.
        let home = root.path().join("home");
        std::fs::create_dir(&home).unwrap();
        std::fs::write(home.join("notes.txt"), "mine").unwrap();
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o755)).unwrap();
        drop(crate::lock::DataDirLock::acquire(&home, "a test").unwrap());
        assert!(Db::open(&home).await.is_err(), "refused: it holds other things");
        assert_eq!(mode(&home), 0o755, "and not touched");
        // A new one is born private.
        let fresh = root.path().join("a/b/data");
        Db::open_or_initialize(&fresh, true).await.unwrap().close().await;
        assert_eq!(mode(&fresh), 0o700);
        assert_eq!(mode(&fresh.join(DATABASE_FILE)), 0o600);
    }
}
