// Virtual media of the VM page, scoped to this VM like an IP-KVM switch's virtual media is to
// its port: the pools and volumes that can go into its drive come from
// GET /v1/vms/NAME/media/choices (right VM.Media on this VM only, no storage rights needed);
// insert and eject; upload an ISO from the browser with progress into a NEW volume of the
// chosen pool (PUT /v1/vms/NAME/media/upload?pool=P&volume=V&insert=true); and boot from it
// (POST /v1/vms/NAME/media/boot: CD-ROM first in the boot order, then a reset). Viewers see
// the current medium only.
import { api, act, showError, uploadMedium, vmPath } from './api.js';

const MEDIUM_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$/;
const MEDIUM_SUFFIX = /\.(iso|img)$/i;

const mib = (n) => (n / 1048576).toFixed(1);

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
  let choices = null;
  // Console input (from the control state) and VM.Media (the choices answer) both needed.
  let allowed = true;
  let mayMedia = true;
  const paintAllowed = () => {
    const show = allowed && mayMedia;
    for (const b of [insert, eject, boot]) b.hidden = !show;
    for (const l of [upload, pool, volume]) l.closest('label').hidden = !show;
    if (!show) progress.hidden = true;
  };

  const paintVolumes = () => {
    const vols = (choices ? choices.volumes : [])
      .filter((v) => v.pool === pool.value)
      .sort((a, b) => (b.iso9660 - a.iso9660) || a.volume.localeCompare(b.volume));
    volume.replaceChildren(...vols.map((v) => {
      const o = new Option(`${v.volume} (${mib(v.size_bytes)} MiB)${v.iso9660 ? '' : ' — not ISO 9660'}`, v.volume);
      o.selected = v.inserted;
      return o;
    }));
    insert.disabled = vols.length === 0;
  };

  const load = async () => {
    try {
      choices = await api('GET', vmPath(name, '/media/choices'));
    } catch (e) {
      if (e.status !== 403) throw e;
      mayMedia = false;
      paintAllowed();
      return;
    }
    mayMedia = true;
    const keep = pool.value;
    const names = [...new Set([
      ...choices.upload_pools.map((p) => p.pool),
      ...choices.volumes.map((v) => v.pool),
    ])].sort();
    pool.replaceChildren(...names.map((p) => new Option(p, p)));
    const inserted = choices.volumes.find((v) => v.inserted);
    if (names.includes(keep)) pool.value = keep;
    else if (inserted) pool.value = inserted.pool;
    paintVolumes();
    paintAllowed();
  };

  pool.addEventListener('change', paintVolumes);
  insert.addEventListener('click', () => act(insert, async () => {
    if (!pool.value || !volume.value) throw new Error('pick a pool and a volume to insert');
    await api('POST', vmPath(name, '/media'), { source: `${pool.value}/${volume.value}` });
    onChanged();
    await load();
  }));
  eject.addEventListener('click', () => act(eject, async () => {
    await api('POST', vmPath(name, '/media/eject'));
    onChanged();
    await load();
  }));
  boot.addEventListener('click', () => act(boot, async () => {
    await api('POST', vmPath(name, '/media/boot'), {});
    onChanged();
  }));
  upload.addEventListener('change', () => act(upload, async () => {
    const file = upload.files[0];
    if (!file) return;
    try {
      if (!pool.value) throw new Error('pick the pool to upload into first');
      const vol = file.name.replace(/[^A-Za-z0-9._-]/g, '_').replace(/^[^A-Za-z0-9]+/, '');
      if (!MEDIUM_NAME.test(vol)) throw new Error(`cannot name a medium after the file ${file.name}: rename it to letters, digits, . _ -`);
      if (!MEDIUM_SUFFIX.test(vol)) throw new Error(`${file.name} does not end in .iso or .img; media are CD images (rename the file)`);
      if (file.size === 0) throw new Error(`${file.name} is empty`);
      // hvd refuses an existing name before it reads the upload (and then the browser sees
      // only a dropped connection): say so first.
      if (choices && choices.volumes.some((v) => v.pool === pool.value && v.volume === vol)) {
        throw new Error(`${pool.value}/${vol} already exists: pick it in the list above, or rename the file (an upload never replaces a volume)`);
      }
      const free = choices && choices.upload_pools.find((p) => p.pool === pool.value);
      if (free && file.size > free.available_bytes) {
        throw new Error(`pool ${pool.value} has ${mib(free.available_bytes)} MiB free, less than the ${mib(file.size)} MiB of ${file.name}`);
      }
      if (choices && file.size > choices.max_upload_bytes) {
        throw new Error(`${file.name} is larger than the ${mib(choices.max_upload_bytes)} MiB a medium may have`);
      }
      progress.hidden = false;
      progress.value = 0;
      progressText.textContent = `uploading ${pool.value}/${vol}…`;
      await uploadMedium(name, pool.value, vol, file, (done, total) => {
        progress.value = Math.floor((done * 100) / total);
        progressText.textContent = `${mib(done)} of ${mib(total)} MiB`;
      });
      progress.value = 100;
      progressText.textContent = `uploaded and inserted ${pool.value}/${vol}`;
      onChanged();
      await load();
    } catch (e) {
      progressText.textContent = 'upload failed';
      throw e;
    } finally {
      upload.value = '';
    }
  }));

  return {
    load: () => load().catch(showError),
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
