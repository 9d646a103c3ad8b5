export const crop = {
};
