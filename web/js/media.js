// Virtual media of the VM page: pick a volume from a pool (GET /v1/pools, .../volumes),
// insert and eject it, upload an ISO from the browser into a new pool volume with progress
// (POST .../volumes, then PUT .../data) and insert it, and boot from it
// (POST /v1/vms/NAME/media/boot: CD-ROM first in the boot order, then a reset).
import { api, act, enc, showError, uploadVolume, vmPath } from './api.js';

const VOL_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$/;

export function mediaPanel(name, { onChanged }) {
  const $ = (id) => document.getElementById(id);
  const current = $('media-current');
  const pool = $('media-pool');
  const volume = $('media-volume');
  const insert = $('media-insert');
  const eject = $('media-eject');
  const boot = $('media-boot');
  const upload = $('media-upload');
  const progress = $('media-upload-progress');
  const progressText = $('media-upload-text');
  const sourceLabel = $('media-source-label');
  const source = $('media-source');
  let canList = true;
  let allowed = true;
  // The operator's tools show only for callers with the right; typing POOL/NAME only when
  // the pools cannot be listed.
  const paintAllowed = () => {
    for (const b of [insert, eject, boot]) b.hidden = !allowed;
    for (const l of [upload, pool, volume]) l.closest('label').hidden = !allowed;
    sourceLabel.hidden = !allowed || canList;
  };

  const loadVolumes = async () => {
    volume.replaceChildren();
    if (!pool.value) return;
    const list = await api('GET', `/v1/pools/${enc(pool.value)}/volumes`);
    const vols = list.volumes.slice().sort((a, b) => {
      const iso = (v) => (/\.iso$/i.test(v.name) ? 0 : 1);
      return iso(a) - iso(b) || a.name.localeCompare(b.name);
    });
    volume.replaceChildren(...vols.map((v) => new Option(v.name, v.name)));
  };

  const loadPools = async () => {
    try {
      const list = await api('GET', '/v1/pools');
      pool.replaceChildren(...list.pools.map((p) => new Option(p.name, p.name)));
      pool.disabled = volume.disabled = false;
      await loadVolumes();
    } catch (e) {
      if (e.status !== 403) throw e;
      // Listing pools is an admin right: an operator can still eject, and insert what an
      // admin put in their VM's spec; the API tells them the rest.
      canList = false;
      pool.replaceChildren(new Option('(listing pools needs an admin)', ''));
      pool.disabled = volume.disabled = true;
      upload.disabled = true;
      paintAllowed();
    }
  };

  pool.addEventListener('change', () => act(null, loadVolumes));
  insert.addEventListener('click', () => act(insert, async () => {
    let src;
    if (canList) {
      if (!pool.value || !volume.value) throw new Error('pick a pool and a volume to insert');
      src = `${pool.value}/${volume.value}`;
    } else {
      src = source.value.trim();
      if (!/^[A-Za-z0-9][A-Za-z0-9._-]*\/[A-Za-z0-9][A-Za-z0-9._-]*$/.test(src)) {
        throw new Error('name the volume to insert as POOL/NAME (an admin can tell you which)');
      }
    }
    await api('POST', vmPath(name, '/media'), { source: src });
    onChanged();
  }));
  eject.addEventListener('click', () => act(eject, async () => {
    await api('POST', vmPath(name, '/media/eject'));
    onChanged();
  }));
  boot.addEventListener('click', () => act(boot, async () => {
    await api('POST', vmPath(name, '/media/boot'), {});
    onChanged();
  }));
  upload.addEventListener('change', () => act(upload, async () => {
    const file = upload.files[0];
    if (!file) return;
    if (!pool.value) throw new Error('pick the pool to upload into first');
    const vol = file.name.replace(/[^A-Za-z0-9._-]/g, '_').replace(/^[^A-Za-z0-9]+/, '');
    if (!VOL_NAME.test(vol)) throw new Error(`cannot name a volume after the file ${file.name}: rename it to letters, digits, . _ -`);
    if (file.size === 0) throw new Error(`${file.name} is empty`);
    progress.hidden = false;
    progress.value = 0;
    progressText.textContent = `creating ${pool.value}/${vol}…`;
    try {
      await api('POST', `/v1/pools/${enc(pool.value)}/volumes`, { name: vol, size: file.size, format: 'raw' });
      await uploadVolume(pool.value, vol, file, (done, total) => {
        progress.value = Math.floor((done * 100) / total);
        progressText.textContent = `${(done / 1048576).toFixed(1)} of ${(total / 1048576).toFixed(1)} MiB`;
      });
      progress.value = 100;
      progressText.textContent = `uploaded ${pool.value}/${vol}; inserting…`;
      await loadVolumes();
      volume.value = vol;
      await api('POST', vmPath(name, '/media'), { source: `${pool.value}/${vol}` });
      progressText.textContent = `uploaded and inserted ${pool.value}/${vol}`;
      onChanged();
    } catch (e) {
      progressText.textContent = 'upload failed';
      throw e;
    } finally {
      upload.value = '';
    }
  }));

  return {
    load: () => loadPools().catch(showError),
    /** Shows the VM's current medium from its spec. */
    setInfo(info) {
      const cd = info && info.spec && info.spec.cdrom;
      current.textContent = cd || 'none';
      eject.disabled = !cd;
      boot.disabled = !cd;
    },
    setAllowed(may) {
      allowed = may;
      paintAllowed();
    },
  };
}
