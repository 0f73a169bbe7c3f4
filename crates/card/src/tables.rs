//! The authorized-server table, the trusted-originator table and the stored policy
//! (design R5, R6, R9). Fixed-size records; a record's first byte says whether it is used.

use crate::CardError;
use crate::layout::{
    ID_MAX, KEY_LEN, MAX_ORIGINATORS, MAX_SERVERS, O_ORIGINATORS, O_POLICY, O_SERVERS,
    ORIGINATOR_LEN, POLICY_MAX, Persist, SERVER_LEN,
};
use crate::store::Store;

/// A listed server: rights bit set and key.
#[derive(Clone, Copy)]
pub(crate) struct ServerEntry {
    pub(crate) rights: u8,
    pub(crate) key: [u8; KEY_LEN],
}

fn check_id(id: &[u8]) -> Result<&str, CardError> {
    let s = core::str::from_utf8(id).map_err(|_| CardError::WrongData("id is not UTF-8"))?;
    if s.is_empty() || s.len() > ID_MAX || s.chars().any(char::is_control) {
        return Err(CardError::WrongData(
            "id: 1-32 bytes, no control characters",
        ));
    }
    Ok(s)
}

fn check_key(key: &[u8]) -> Result<&[u8; KEY_LEN], CardError> {
    crate::crypto::public_key(key).map_err(|_| CardError::WrongData("not a P-256 public key"))?;
    key.try_into()
        .map_err(|_| CardError::WrongData("key: 65 bytes SEC1 uncompressed"))
}

/// DGI `0301`: rights || key || id.
pub(crate) fn parse_server_dgi(v: &[u8]) -> Result<(u8, &[u8; KEY_LEN], &str), CardError> {
    if v.len() < 1 + KEY_LEN + 1 {
        return Err(CardError::WrongData("server DGI too short"));
    }
    let key = check_key(&v[1..1 + KEY_LEN])?;
    Ok((v[0], key, check_id(&v[1 + KEY_LEN..])?))
}

/// DGI `0302`: key || id.
pub(crate) fn parse_originator_dgi(v: &[u8]) -> Result<(&[u8; KEY_LEN], &str), CardError> {
    if v.len() < KEY_LEN + 1 {
        return Err(CardError::WrongData("originator DGI too short"));
    }
    let key = check_key(&v[..KEY_LEN])?;
    Ok((key, check_id(&v[KEY_LEN..])?))
}

/// Finds the slot holding `id` in a table, or the first free one.
fn slot_of<S: Store>(
    p: &Persist<S>,
    base: usize,
    rec: usize,
    count: usize,
    id_at: usize,
    id: &str,
) -> Result<(Option<usize>, Option<usize>), CardError> {
    let mut free = None;
    for i in 0..count {
        let off = base + i * rec;
        if p.u8_at(off)? == 0 {
            free = free.or(Some(off));
            continue;
        }
        let mut buf = [0u8; ID_MAX];
        let stored = p.lv_at(off + id_at, ID_MAX, &mut buf)?;
        if stored == id.as_bytes() {
            return Ok((Some(off), free));
        }
    }
    Ok((None, free))
}

/// Adds or replaces a server (inside a transaction).
pub(crate) fn put_server<S: Store>(
    p: &mut Persist<S>,
    id: &str,
    key: &[u8; KEY_LEN],
    rights: u8,
) -> Result<(), CardError> {
    let (found, free) = slot_of(p, O_SERVERS, SERVER_LEN, MAX_SERVERS, 2, id)?;
    let off = found.or(free).ok_or(CardError::NoSpace)?;
    p.put_u8(off, 1)?;
    p.put_u8(off + 1, rights)?;
    p.put_lv(off + 2, id.as_bytes())?;
    p.write(off + 3 + ID_MAX, key)?;
    Ok(())
}

/// Removes a server (inside a transaction).
pub(crate) fn remove_server<S: Store>(p: &mut Persist<S>, id: &str) -> Result<(), CardError> {
    let (found, _) = slot_of(p, O_SERVERS, SERVER_LEN, MAX_SERVERS, 2, id)?;
    let off = found.ok_or(CardError::NotFound)?;
    p.write(off, &[0u8; SERVER_LEN])?;
    Ok(())
}

/// Looks a server up by id.
pub(crate) fn find_server<S: Store>(
    p: &Persist<S>,
    id: &str,
) -> Result<Option<ServerEntry>, CardError> {
    let (found, _) = slot_of(p, O_SERVERS, SERVER_LEN, MAX_SERVERS, 2, id)?;
    let Some(off) = found else { return Ok(None) };
    let mut key = [0u8; KEY_LEN];
    p.read(off + 3 + ID_MAX, &mut key)?;
    Ok(Some(ServerEntry {
        rights: p.u8_at(off + 1)?,
        key,
    }))
}

/// Adds or replaces an originator (inside a transaction).
pub(crate) fn put_originator<S: Store>(
    p: &mut Persist<S>,
    id: &str,
    key: &[u8; KEY_LEN],
) -> Result<(), CardError> {
    let (found, free) = slot_of(p, O_ORIGINATORS, ORIGINATOR_LEN, MAX_ORIGINATORS, 1, id)?;
    let off = found.or(free).ok_or(CardError::NoSpace)?;
    p.put_u8(off, 1)?;
    p.put_lv(off + 1, id.as_bytes())?;
    p.write(off + 2 + ID_MAX, key)?;
    Ok(())
}

/// Removes an originator (inside a transaction).
pub(crate) fn remove_originator<S: Store>(p: &mut Persist<S>, id: &str) -> Result<(), CardError> {
    let (found, _) = slot_of(p, O_ORIGINATORS, ORIGINATOR_LEN, MAX_ORIGINATORS, 1, id)?;
    let off = found.ok_or(CardError::NotFound)?;
    p.write(off, &[0u8; ORIGINATOR_LEN])?;
    Ok(())
}

/// Visits every used server record: (id, key, rights).
pub(crate) fn for_each_server<S: Store>(
    p: &Persist<S>,
    mut f: impl FnMut(&str, &[u8; KEY_LEN], u8) -> Result<(), CardError>,
) -> Result<(), CardError> {
    for i in 0..MAX_SERVERS {
        let off = O_SERVERS + i * SERVER_LEN;
        if p.u8_at(off)? == 0 {
            continue;
        }
        let mut idb = [0u8; ID_MAX];
        let id = p.lv_at(off + 2, ID_MAX, &mut idb)?;
        let id = core::str::from_utf8(id).map_err(|_| CardError::Internal("corrupt server id"))?;
        let mut key = [0u8; KEY_LEN];
        p.read(off + 3 + ID_MAX, &mut key)?;
        f(id, &key, p.u8_at(off + 1)?)?;
    }
    Ok(())
}

/// Visits every used originator record: (id, key).
pub(crate) fn for_each_originator<S: Store>(
    p: &Persist<S>,
    mut f: impl FnMut(&str, &[u8; KEY_LEN]) -> Result<(), CardError>,
) -> Result<(), CardError> {
    for i in 0..MAX_ORIGINATORS {
        let off = O_ORIGINATORS + i * ORIGINATOR_LEN;
        if p.u8_at(off)? == 0 {
            continue;
        }
        let mut idb = [0u8; ID_MAX];
        let id = p.lv_at(off + 1, ID_MAX, &mut idb)?;
        let id =
            core::str::from_utf8(id).map_err(|_| CardError::Internal("corrupt originator id"))?;
        let mut key = [0u8; KEY_LEN];
        p.read(off + 2 + ID_MAX, &mut key)?;
        f(id, &key)?;
    }
    Ok(())
}

/// Checks that `v` is a policy the card understands and can store.
pub(crate) fn check_policy(v: &[u8]) -> Result<(), CardError> {
    if v.len() > POLICY_MAX {
        return Err(CardError::WrongData("policy too long"));
    }
    crate::crypto::decode_policy(v)?;
    Ok(())
}

/// Stores an encoded policy (inside a transaction).
pub(crate) fn set_policy<S: Store>(p: &mut Persist<S>, v: &[u8]) -> Result<(), CardError> {
    check_policy(v)?;
    p.put_u16(O_POLICY, v.len() as u16)?;
    p.write(O_POLICY + 2, v)?;
    Ok(())
}

/// Reads the stored policy encoding into `buf` (empty if none was set).
pub(crate) fn policy_bytes<'b, S: Store>(
    p: &Persist<S>,
    buf: &'b mut [u8; POLICY_MAX],
) -> Result<&'b [u8], CardError> {
    let n = usize::from(p.u16_at(O_POLICY)?).min(POLICY_MAX);
    p.read(O_POLICY + 2, &mut buf[..n])?;
    Ok(&buf[..n])
}
