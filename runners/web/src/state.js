// The recurrent state of one sequence in JavaScript: float32 arrays in manifest order, with the model's
// fingerprint, saved and loaded in the safetensors layout of seqedge's State.save (so states move both ways).

import { specShape } from './manifest.js';
import { readSafetensors, writeSafetensors } from './safetensors.js';

export const STATE_FORMAT = 'seqedge-state';
export const STATE_FORMAT_VERSION = '1';

export class State {
  /** tensors: Float32Array per spec (batch 1), specs: the manifest's state specs, fingerprint: the model's. */
  constructor(tensors, specs, fingerprint) {
    if (tensors.length !== specs.length) {
      throw new RangeError(`state has ${tensors.length} tensors but the model expects ${specs.length}`);
    }
    specs.forEach((spec, i) => {
      const size = specShape(spec).reduce((a, b) => a * b, 1);
      if (!(tensors[i] instanceof Float32Array) || tensors[i].length !== size) {
        throw new RangeError(`${spec.name} holds ${tensors[i]?.length} values, expected ${size} ` +
          `(shape ${JSON.stringify(specShape(spec))})`);
      }
    });
    this.tensors = tensors;
    this.specs = specs;
    this.fingerprint = fingerprint;
  }

  static zeros(specs, fingerprint) {
    return new State(specs.map((s) => new Float32Array(specShape(s).reduce((a, b) => a * b, 1))), specs, fingerprint);
  }

  /** Safetensors bytes with seqedge's metadata (format, format_version, fingerprint, specs). */
  save() {
    const tensors = {};
    this.specs.forEach((spec, i) => { tensors[spec.name] = { shape: specShape(spec), data: this.tensors[i] }; });
    const specs = JSON.stringify(this.specs.map(({ name, layer, kind, shape, dtype }) => ({ name, layer, kind, shape, dtype })));
    return writeSafetensors(tensors, { format: STATE_FORMAT, format_version: STATE_FORMAT_VERSION,
      fingerprint: this.fingerprint, specs });
  }

  /** A state file for the model described by `specs`/`fingerprint`; metadata keys it does not know are ignored. */
  static load(bytes, specs, fingerprint) {
    const { metadata, tensors } = readSafetensors(bytes);
    if (metadata.format !== STATE_FORMAT) throw new Error('not a seqedge state file (metadata format is missing)');
    if (metadata.format_version !== STATE_FORMAT_VERSION) {
      throw new Error(`state format ${metadata.format_version}, this runner reads ${STATE_FORMAT_VERSION}; ` +
        're-create the state with a matching seqedge');
    }
    if (metadata.fingerprint !== fingerprint) {
      throw new Error(`the state belongs to another model (fingerprint ${metadata.fingerprint}, expected ` +
        `${fingerprint}); prefill a new state with this artifact`);
    }
    const arrays = specs.map((spec) => {
      const t = tensors[spec.name];
      if (!t) throw new Error(`the state file lacks ${spec.name}`);
      if (JSON.stringify(t.shape) !== JSON.stringify(specShape(spec))) {
        throw new Error(`${spec.name} has shape ${JSON.stringify(t.shape)}, expected ${JSON.stringify(specShape(spec))}`);
      }
      return t.data;
    });
    return new State(arrays, specs, fingerprint);
  }
}
