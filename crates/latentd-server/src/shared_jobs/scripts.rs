//! The state changes of a shared job, each one Lua script so that it is atomic in
//! Redis: a job reaches one terminal state however replicas and clients race.
//!
//! A job's hash holds `state`, `owner` (the replica running it, empty while it waits
//! in the queue stream), `events` (how many events its stream holds; event `k` has
//! stream id `0-(k+1)`), `cancel` (`1` once a cancel was asked for) and the fields of
//! its status.

use redis::Script;

/// Appends an event from the job's owner, with the state and fields it implies.
///
/// KEYS: hash, events. ARGV: owner, event JSON, new state (or empty), expiry in ms
/// (or empty), then field/value pairs. Returns `{n, cancel}`: `n` the event's number
/// (from 1), or -1 when the job is gone, -2 when it already ended, -3 when another
/// replica owns it now; `cancel` is 1 when a cancel was asked for.
const PUSH: &str = r#"
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {-1, 0} end
if state == 'succeeded' or state == 'failed' or state == 'cancelled' then return {-2, 0} end
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return {-3, 0} end
local n = redis.call('HINCRBY', KEYS[1], 'events', 1)
redis.call('XADD', KEYS[2], '0-' .. n, 'e', ARGV[2])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'state', ARGV[3]) end
for i = 5, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
if ARGV[4] ~= '' then
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
end
return {n, tonumber(redis.call('HGET', KEYS[1], 'cancel') or '0')}
"#;

/// Takes a job that a replica read from the queue stream (or reclaimed).
///
/// KEYS: hash. ARGV: the replica. Returns `{request JSON, cancel}`, or nil when the
/// job is gone or has already ended (its queue entry is then stale).
const CLAIM: &str = r#"
local state = redis.call('HGET', KEYS[1], 'state')
if not state or state == 'succeeded' or state == 'failed' or state == 'cancelled' then
  return false
end
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'state', 'queued')
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
return {redis.call('HGET', KEYS[1], 'request'), redis.call('HGET', KEYS[1], 'cancel') or '0'}
"#;

/// Asks for a job to be cancelled. A job no replica holds ends here and now.
///
/// KEYS: hash, events. ARGV: the `error` event JSON, its message, expiry in ms, now in
/// ms. Returns 0: no such job, 1: it had already ended, 2: cancelled now, 3: asked of
/// its owner (who ends it).
const CANCEL: &str = r#"
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return 0 end
if state == 'succeeded' or state == 'failed' or state == 'cancelled' then return 1 end
redis.call('HSET', KEYS[1], 'cancel', '1')
if redis.call('HGET', KEYS[1], 'owner') ~= '' then return 3 end
local n = redis.call('HINCRBY', KEYS[1], 'events', 1)
redis.call('XADD', KEYS[2], '0-' .. n, 'e', ARGV[1])
redis.call('HSET', KEYS[1], 'state', 'cancelled', 'error_code', 'cancelled',
  'error_message', ARGV[2], 'finished_ms', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 2
"#;

/// Hands a job its owner will not finish back to the queue (the caller then adds a
/// new queue entry).
///
/// KEYS: hash, events. ARGV: owner, the `queued` event JSON. Returns 1 when released,
/// 0 when the job is gone, ended, or owned by another replica.
const RELEASE: &str = r#"
local state = redis.call('HGET', KEYS[1], 'state')
if not state or state == 'succeeded' or state == 'failed' or state == 'cancelled' then return 0 end
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
local n = redis.call('HINCRBY', KEYS[1], 'events', 1)
redis.call('XADD', KEYS[2], '0-' .. n, 'e', ARGV[2])
redis.call('HSET', KEYS[1], 'owner', '', 'state', 'queued', 'step', '0', 'started_ms', '0')
return 1
"#;

/// The loaded scripts.
pub(crate) struct Scripts {
    pub push: Script,
    pub claim: Script,
    pub cancel: Script,
    pub release: Script,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        Self {
            push: Script::new(PUSH),
            claim: Script::new(CLAIM),
            cancel: Script::new(CANCEL),
            release: Script::new(RELEASE),
        }
    }
}
